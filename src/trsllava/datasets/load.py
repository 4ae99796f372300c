"""Dataset loading: Karpathy-style annotation JSON, NWPU-Captions JSON, a generic caption file, or
the built-in sample (formats in ``readers``).

All end in the same two tables (``tables.IMAGES`` and ``tables.REFERENCES``) restricted to the
gallery: the evaluation split, or every split when the whole archive is the gallery, and in an
annotation report (``report``: blank captions dropped, images without a usable caption, irregular
caption counts, duplicate file names). Image files are optional (evaluating imported captions needs
none); when an image folder is configured every gallery image must exist, and a missing one is an
error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from ..errors import TrsllavaError
from ..tables import IMAGES, REFERENCES, conform
from .readers import READERS
from .report import annotation_report, collapse_duplicates, has_words

BUILTIN_SAMPLE_DIR = Path(str(resources.files("trsllava") / "data" / "sample"))
BUILTIN_ANNOTATIONS = BUILTIN_SAMPLE_DIR / "dataset_rsicd_sample.json"
BUILTIN_IMAGES = BUILTIN_SAMPLE_DIR / "images"


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of config.yaml's ``datasets`` (see the config schema for the meaning of each key)."""

    name: str
    format: str  # builtin | karpathy | generic | nwpu
    annotations: Path | None = None
    images: Path | None = None
    split: str = "test"
    gallery: str = "split"  # split | all
    captions_per_image: int | None = 5  # expected usable captions per image; None: no check

    @classmethod
    def from_config(cls, name: str, entry: dict, base_dir: Path = Path(".")) -> "DatasetSpec":
        def path_of(key):
            value = entry.get(key)
            return None if value in (None, "") else (base_dir / Path(value).expanduser()).resolve()

        spec = cls(
            name=name,
            format=entry["format"],
            annotations=path_of("annotations"),
            images=path_of("images"),
            split=entry.get("split", "test"),
            gallery=entry.get("gallery", "split"),
            captions_per_image=entry.get("captions_per_image", 5),
        )
        if spec.format == "builtin":
            spec = cls(name, "builtin", BUILTIN_ANNOTATIONS, BUILTIN_IMAGES, spec.split, spec.gallery, spec.captions_per_image)
        elif spec.annotations is None:
            raise TrsllavaError(f"config: datasets.{name}.annotations is required for format '{spec.format}'")
        return spec


def load_dataset(spec: DatasetSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (images, references) for the gallery of ``spec``; see the module docstring."""
    images, references, _ = read_dataset(spec)
    return images, references


def read_dataset(spec: DatasetSpec) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Return (images, references, annotation report) for the gallery of ``spec``.

    The references hold the usable captions only (``report`` says which were blank and dropped);
    the report is ``datasets.report.annotation_report`` plus the dataset's name, file, format,
    split, gallery, duplicate file names and where caption ids came from. Raises TrsllavaError
    naming the file (and the entry) when the file is missing, malformed, lists one image twice
    with different captions, or leaves the split without a usable caption."""
    if spec.format not in READERS:
        raise TrsllavaError(f"dataset '{spec.name}': unknown format '{spec.format}' (one of {sorted(READERS)})")
    if not spec.annotations.is_file():
        raise TrsllavaError(f"dataset '{spec.name}': annotation file not found: {spec.annotations}")
    source = f"annotation file {spec.annotations}"
    records = READERS[spec.format](spec.annotations, spec.split)
    if not any(r["split"] == spec.split for r in records):
        found = sorted(set(r["split"] for r in records))
        raise TrsllavaError(
            f"dataset '{spec.name}': no image in split '{spec.split}' of {spec.annotations} (splits present: {found})"
        )
    in_gallery = lambda record: spec.gallery == "all" or record["split"] == spec.split
    records, duplicates = collapse_duplicates(records, in_gallery, source)
    gallery = [r for r in records if in_gallery(r)]
    id_source = _number_captions(gallery)
    report = {
        "dataset": spec.name,
        "format": spec.format,
        "annotations": str(spec.annotations),
        "split": spec.split,
        "gallery": spec.gallery,
        **annotation_report(gallery, spec.split, spec.captions_per_image),
        "duplicate_filenames": duplicates,
        "caption_ids": id_source,
    }
    if report["queries"]["text_to_image"] == 0:
        raise TrsllavaError(
            f"dataset '{spec.name}': no usable caption in split '{spec.split}' of {spec.annotations} "
            f"({report['split_images']} image(s), {report['captions_listed']} caption(s), none with a letter or digit)"
        )
    images, references = _tables(gallery, spec)
    return images, references, report


def _number_captions(gallery: list[dict]) -> str:
    """Give every caption an id: the file's own when each caption has one and no two share it,
    else the captions' order in the file (the same for every run). Returns which ("file", "file order")."""
    ids = [cid for r in gallery for cid, _ in r["captions"]]
    if all(cid is not None for cid in ids) and len(set(ids)) == len(ids):
        return "file"
    counter = iter(range(len(ids)))
    for record in gallery:
        record["captions"] = [(next(counter), text) for _, text in record["captions"]]
    return "file order"


def _tables(gallery: list[dict], spec: DatasetSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    paths = [_image_path(spec, r) for r in gallery]
    images = pl.DataFrame(
        {
            "image_id": [r["filename"] for r in gallery],
            "filename": [r["filename"] for r in gallery],
            "split": [r["split"] for r in gallery],
            "path": paths,
        },
        schema=IMAGES,
    )
    usable = [(cid, r["filename"], text.strip()) for r in gallery for cid, text in r["captions"] if has_words(text)]
    references = pl.DataFrame(
        {
            "caption_id": [cid for cid, _, _ in usable],
            "image_id": [image for _, image, _ in usable],
            "text": [text for _, _, text in usable],
        },
        schema=REFERENCES,
    )
    return conform(images, IMAGES, spec.name), conform(references, REFERENCES, spec.name)


def _image_path(spec: DatasetSpec, record: dict) -> str | None:
    """Find an image as <images>/<split>/<filename> (RSICD's layout), <images>/<class>/<filename>
    (NWPU-Captions') or <images>/<filename>."""
    if spec.images is None:
        return None
    filename = record["filename"]
    folders = [record["folder"]] if record.get("folder") else [record["split"]]
    candidates = [spec.images / folder / filename for folder in folders] + [spec.images / filename]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return str(candidate)
        except (OSError, ValueError):  # a name the file system cannot hold (too long, NUL) is not there
            continue
    raise TrsllavaError(
        f"dataset '{spec.name}': image file '{filename}' (listed in {spec.annotations}, {record['where']}) not found "
        f"as {' or '.join(str(c) for c in candidates)}"
    )
