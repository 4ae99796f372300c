"""Rebuild the built-in sample (src/trsllava/data/sample) from a full RSICD copy.

Not part of the product: this records how the shipped sample was chosen, so it
can be re-made or enlarged. Selection is deterministic: from RSICD's test split,
the two lowest-numbered images of each of the 30 named scene classes (60 images),
skipping the numerically named files whose class is not in the filename.

    python scripts/build_sample.py ../shared/data/rsicd
"""

import json
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

PER_CLASS = 2
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "src" / "trsllava" / "data" / "sample"


def main(rsicd_root: str) -> None:
    root = Path(rsicd_root)
    annotations = json.loads((root / "dataset_rsicd.json").read_text())
    by_class = defaultdict(list)
    for image in annotations["images"]:
        match = re.fullmatch(r"([a-z]+)_(\d+)\.jpg", image["filename"])
        if image["split"] == "test" and match:
            by_class[match.group(1)].append((int(match.group(2)), image))
    chosen = []
    for scene in sorted(by_class):
        chosen += [image for _, image in sorted(by_class[scene], key=lambda t: t[0])[:PER_CLASS]]
    images_dir = SAMPLE_DIR / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True)
    for image in chosen:
        shutil.copyfile(root / "images" / "test" / image["filename"], images_dir / image["filename"])
    sample = {"dataset": "rsicd-sample", "images": chosen}
    (SAMPLE_DIR / "dataset_rsicd_sample.json").write_text(json.dumps(sample, indent=1) + "\n")
    print(f"{len(chosen)} images from {len(by_class)} classes -> {SAMPLE_DIR}")


if __name__ == "__main__":
    main(sys.argv[1])
