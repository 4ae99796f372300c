"""Dataset loading: Karpathy-style annotation JSON, a generic caption file, or the built-in sample.

All three end in the same two tables (``tables.IMAGES`` and ``tables.REFERENCES``) restricted to the
gallery: the evaluation split, or every split when the whole archive is the gallery. Image files are
optional (evaluating imported captions needs none); when an image folder is configured every gallery
image must exist, and a missing one is an error that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from ..errors import TrsllavaError
from ..tables import IMAGES, REFERENCES, conform, read_rows

BUILTIN_SAMPLE_DIR = Path(str(resources.files("trsllava") / "data" / "sample"))
BUILTIN_ANNOTATIONS = BUILTIN_SAMPLE_DIR / "dataset_rsicd_sample.json"
BUILTIN_IMAGES = BUILTIN_SAMPLE_DIR / "images"


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of config.yaml's ``datasets`` (see the config schema for the meaning of each key)."""

    name: str
    format: str  # builtin | karpathy | generic
    annotations: Path | None = None
    images: Path | None = None
    split: str = "test"
    gallery: str = "split"  # split | all

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
        )
        if spec.format == "builtin":
            spec = cls(name, "builtin", BUILTIN_ANNOTATIONS, BUILTIN_IMAGES, spec.split, spec.gallery)
        elif spec.annotations is None:
            raise TrsllavaError(f"config: datasets.{name}.annotations is required for format '{spec.format}'")
        return spec


def load_dataset(spec: DatasetSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (images, references) for the gallery of ``spec``; see the module docstring."""
    if not spec.annotations.is_file():
        raise TrsllavaError(f"dataset '{spec.name}': annotation file not found: {spec.annotations}")
    if spec.format in ("karpathy", "builtin"):
        records = _read_karpathy(spec.annotations)
    elif spec.format == "generic":
        records = _read_generic(spec.annotations, spec.split)
    else:
        raise TrsllavaError(f"dataset '{spec.name}': unknown format '{spec.format}'")
    images, references = _tables(records, spec)
    if images.filter(pl.col("split") == spec.split).is_empty():
        found = sorted(set(r["split"] for r in records))
        raise TrsllavaError(
            f"dataset '{spec.name}': no image in split '{spec.split}' of {spec.annotations} (splits present: {found})"
        )
    return images, references


def _read_karpathy(path: Path) -> list[dict]:
    """Parse and check a Karpathy-style file: {"images": [{"filename", "split", "sentences": [{"raw"}]}]}."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrsllavaError(f"annotation file {path}: not readable as JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise TrsllavaError(
            f"annotation file {path}: expected a Karpathy-style object with an 'images' list "
            f"(found {type(document).__name__}{' with keys ' + str(sorted(document)) if isinstance(document, dict) else ''})"
        )
    records = []
    next_caption_id = 0
    for position, image in enumerate(document["images"]):
        where = f"annotation file {path}: images[{position}]"
        if not isinstance(image, dict):
            raise TrsllavaError(f"{where}: expected an object, found {type(image).__name__}")
        for key in ("filename", "sentences"):
            if key not in image:
                raise TrsllavaError(f"{where}: missing key '{key}'")
        if not isinstance(image["sentences"], list):
            raise TrsllavaError(f"{where}.sentences: expected a list")
        captions = []
        for index, sentence in enumerate(image["sentences"]):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
                raise TrsllavaError(f"{where}.sentences[{index}]: expected an object with a string 'raw'")
            caption_id = sentence.get("sentid", next_caption_id)
            next_caption_id = max(next_caption_id, int(caption_id)) + 1
            captions.append((int(caption_id), sentence["raw"]))
        records.append({"filename": str(image["filename"]), "split": str(image.get("split", "test")), "captions": captions})
    return records


def _read_generic(path: Path, default_split: str) -> list[dict]:
    """A CSV or JSONL file of rows (filename, caption[, split]); several rows per image."""
    frame = read_rows(path, {"filename", "caption"})
    if "split" not in frame.columns:
        frame = frame.with_columns(pl.lit(default_split).alias("split"))
    frame = frame.select(pl.col("filename", "caption", "split").cast(pl.String))
    if frame.select(pl.any_horizontal(pl.all().is_null()).any()).item():
        bad = frame.with_row_index("row").filter(pl.any_horizontal(pl.all().is_null())).get_column("row")[0]
        raise TrsllavaError(f"caption file {path}: row {bad + 1} has an empty filename, caption or split")
    records = []
    for caption_id, ((filename, split), group) in enumerate(
        frame.with_row_index("caption_id").group_by(["filename", "split"], maintain_order=True)
    ):
        records.append(
            {"filename": filename, "split": split, "captions": list(zip(group["caption_id"].to_list(), group["caption"].to_list()))}
        )
    return records


def _tables(records: list[dict], spec: DatasetSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    gallery = [r for r in records if spec.gallery == "all" or r["split"] == spec.split]
    seen = set()
    for record in gallery:
        if record["filename"] in seen:
            raise TrsllavaError(f"dataset '{spec.name}': filename '{record['filename']}' appears twice in {spec.annotations}")
        seen.add(record["filename"])
    paths = [_image_path(spec, r["filename"], r["split"]) for r in gallery]
    images = pl.DataFrame(
        {
            "image_id": [r["filename"] for r in gallery],
            "filename": [r["filename"] for r in gallery],
            "split": [r["split"] for r in gallery],
            "path": paths,
        },
        schema=IMAGES,
    )
    references = pl.DataFrame(
        {
            "caption_id": [cid for r in gallery for cid, _ in r["captions"]],
            "image_id": [r["filename"] for r in gallery for _ in r["captions"]],
            "text": [text.strip() for r in gallery for _, text in r["captions"]],
        },
        schema=REFERENCES,
    )
    if references["caption_id"].is_duplicated().any():
        duplicate = references.filter(pl.col("caption_id").is_duplicated())["caption_id"][0]
        raise TrsllavaError(f"dataset '{spec.name}': caption id {duplicate} is used twice in {spec.annotations}")
    return conform(images, IMAGES, spec.name), conform(references, REFERENCES, spec.name)


def _image_path(spec: DatasetSpec, filename: str, split: str) -> str | None:
    """Find an image as <images>/<split>/<filename> (RSICD's layout) or <images>/<filename>."""
    if spec.images is None:
        return None
    for candidate in (spec.images / split / filename, spec.images / filename):
        if candidate.is_file():
            return str(candidate)
    raise TrsllavaError(
        f"dataset '{spec.name}': image file '{filename}' (listed in {spec.annotations}) not found "
        f"as {spec.images / split / filename} or {spec.images / filename}"
    )
