"""Map captions written for anonymised copies of the sample images back to the real filenames.

How the built-in caption set was made (see src/trsllava/data/sample/README.md): the sample images
were copied under shuffled anonymous names (img_001.jpg ...), so the captioner saw neither the
scene class in the filename nor the order of the classes; this script restores the names.

    python scripts/unblind_captions.py blind_captions.jsonl blind_map.csv out.jsonl
"""

import csv
import json
import sys


def main(captions_path: str, mapping_path: str, out_path: str) -> None:
    with open(mapping_path) as handle:
        mapping = dict(csv.reader(handle))
    with open(captions_path) as source, open(out_path, "w") as out:
        for line in source:
            row = json.loads(line)
            row["filename"] = mapping[row["filename"]]
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
