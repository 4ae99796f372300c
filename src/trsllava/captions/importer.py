"""The ``import`` backend: caption sets written by any VLM elsewhere, read from JSONL, JSON, CSV or parquet.

Rows are ``{"filename": ..., "text": ...}`` with optional ``prompt``, ``variant``, ``field`` and
``model``, or one of the RSRT layouts of the TRSLLaVA authors' files (``layouts``: grouped by
image, or one record per variant). They become rows of the merged caption table
(``tables.CAPTIONS``), exactly as the generating backends write them, with the import's provenance
on each row.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath

import polars as pl

from .. import __version__
from ..tables import CAPTIONS, conform, read_records
from .layouts import flat_rows

DEFAULT_PROMPT = "default"


def import_captions(
    path: Path, captioner: str, images: pl.DataFrame, model_id: str | None = None
) -> tuple[pl.DataFrame, dict]:
    """Return (caption table for the gallery ``images``, coverage report).

    ``model_id`` (the config's ``model``) names the model of every row; rows of a file that names
    its own ``model`` keep it when ``model_id`` is None. Raises TrsllavaError naming the file (and the
    line or row) when it cannot be read, has no known layout or holds a value of the wrong type."""
    path = Path(path)
    columns, layout = flat_rows(read_records(path, "caption file"))
    raw = pl.DataFrame(
        columns,
        schema={"filename": pl.String, "text": pl.String, "prompt": pl.String, "variant": pl.Int64, "field": pl.String,
                "model": pl.String},
    ).rename({"filename": "image_id"})
    raw = raw.with_columns(
        pl.col("text").str.strip_chars(),
        pl.col("prompt").fill_null(DEFAULT_PROMPT),
        (pl.lit(model_id, dtype=pl.String) if model_id is not None else pl.col("model")).alias("model_id"),
    )
    # a text without a letter or digit ("", spaces, "...") is empty, as for human captions (datasets.report)
    usable = pl.col("text").is_not_null() & pl.col("text").str.contains(r"[\p{L}\p{N}]")
    empty = raw.filter(~usable)
    raw = raw.filter(usable)

    gallery = set(images["image_id"].to_list())
    raw = raw.with_columns(pl.col("image_id").replace_strict(_gallery_names(raw["image_id"], gallery), default=None).fill_null(pl.col("image_id")))
    unknown = raw.filter(~pl.col("image_id").is_in(gallery))
    known = raw.filter(pl.col("image_id").is_in(gallery))
    uncaptioned = sorted(gallery - set(known["image_id"].to_list()))

    table = known.with_columns(
        pl.lit(captioner).alias("captioner"),
        pl.lit("import").alias("backend"),
        pl.lit(str(path)).alias("source"),
        pl.lit(json.dumps({"trsllava": __version__, "polars": pl.__version__})).alias("versions"),
    )
    table = conform(table, CAPTIONS, f"caption file {path}").sort(
        ["image_id", "prompt", "variant", "field"], nulls_last=True, maintain_order=True
    )
    coverage = {
        "captioner": captioner,
        "source": str(path),
        "layout": layout,
        "rows_read": raw.height + empty.height,
        "rows_kept": table.height,
        "empty_texts_dropped": empty.height,
        "gallery_images": len(gallery),
        "captioned_images": len(gallery) - len(uncaptioned),
        "images_without_caption": uncaptioned,
        "captions_for_unknown_images": unknown.height,
        "unknown_images": sorted(set(unknown["image_id"].to_list())),
        "prompts": table.group_by("prompt").len().sort("prompt").rows(),
    }
    return table, coverage


def describe_coverage(coverage: dict, dataset: str) -> list[str]:
    """Human-readable warnings for the log (empty when coverage is complete)."""
    lines = []
    if coverage["unknown_images"]:
        names = coverage["unknown_images"]
        lines.append(
            f"{coverage['captions_for_unknown_images']} caption(s) in {coverage['source']} name {len(names)} image(s) "
            f"not in the gallery of dataset '{dataset}' (ignored), e.g. {names[:5]}"
        )
    if coverage["images_without_caption"]:
        names = coverage["images_without_caption"]
        lines.append(
            f"{len(names)} of {coverage['gallery_images']} gallery image(s) of dataset '{dataset}' have no caption in "
            f"{coverage['source']}; they rank last for every query, e.g. {names[:5]}"
        )
    if coverage["empty_texts_dropped"]:
        lines.append(f"{coverage['empty_texts_dropped']} empty caption text(s) in {coverage['source']} were dropped")
    return lines


def _gallery_names(names: pl.Series, gallery: set[str]) -> dict[str, str]:
    """Map the file names a VLM job recorded onto gallery image ids. Jobs elsewhere often record the
    path they read ("images/test/a.jpg") or a converted copy ("a.png" for "a.tif"): match the exact
    name, else the base name, else the stem when exactly one gallery image has it."""
    by_stem: dict[str, list[str]] = {}
    for image_id in gallery:
        by_stem.setdefault(PurePath(image_id).stem, []).append(image_id)
    mapping = {}
    for name in names.unique().drop_nulls().to_list():
        base = PurePath(name.replace("\\", "/")).name
        if name in gallery:
            mapping[name] = name
        elif base in gallery:
            mapping[name] = base
        elif len(by_stem.get(PurePath(base).stem, [])) == 1:
            mapping[name] = by_stem[PurePath(base).stem][0]
    return mapping
