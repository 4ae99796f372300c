"""Re-make the packaged query bank (src/trsllava/data/query_bank/) from a full RSICD copy.

The bank holds human captions of RSICD **train** images: never the test split the built-in sample is
drawn from, so hubness statistics taken from it are not transductive. ``--images N`` keeps N train
images evenly spaced in the file's order (all of them by default), with their five captions each.

    python scripts/make_query_bank.py /path/to/dataset_rsicd.json --images 2000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "trsllava" / "data" / "query_bank" / "rsicd_train_bank.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations", type=Path, help="RSICD's dataset_rsicd.json (Karpathy layout)")
    parser.add_argument("--images", type=int, default=None, help="train images to keep, evenly spaced (default: all)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    train = [image for image in json.loads(args.annotations.read_text())["images"] if image["split"] == "train"]
    if args.images is not None and args.images < len(train):
        step = len(train) / args.images
        train = [train[int(i * step)] for i in range(args.images)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for image in train:
            for sentence in image["sentences"]:
                out.write(json.dumps({"filename": image["filename"], "caption": sentence["raw"].strip()}) + "\n")
    print(f"{args.out}: {sum(len(i['sentences']) for i in train)} captions of {len(train)} train images")


if __name__ == "__main__":
    main()
