"""The typed, columnar tables that flow between stages, and their checks.

Every stage reads and writes polars frames with exactly these schemas, so a stage written later
(the VLM captioning backends) produces the very same caption table that the importer does.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .errors import TrsllavaError

READERS = {
    ".jsonl": lambda path: pl.read_ndjson(path, infer_schema_length=None),
    ".ndjson": lambda path: pl.read_ndjson(path, infer_schema_length=None),
    ".csv": lambda path: pl.read_csv(path, infer_schema=False),  # all strings: conform() types them
    ".parquet": pl.read_parquet,
}


def read_rows(path: Path, required: set[str], what: str = "caption file") -> pl.DataFrame:
    """Read a JSONL, CSV or parquet file of rows with errors that name the file and the columns."""
    if not path.is_file():
        raise TrsllavaError(f"{what} not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise TrsllavaError(f"{what} {path}: unsupported extension '{path.suffix}' (use one of {sorted(READERS)})")
    try:
        frame = reader(path)
    except Exception as exc:  # polars raises many kinds of parse errors
        raise TrsllavaError(f"{what} {path}: not readable: {exc}") from exc
    missing = required - set(frame.columns)
    if missing:
        raise TrsllavaError(f"{what} {path}: missing column(s) {sorted(missing)}; found {frame.columns}")
    return frame

# One row per image of a dataset (all splits; evaluation picks its split).
IMAGES = {
    "image_id": pl.String,  # the annotation's filename: unique within a dataset
    "filename": pl.String,
    "split": pl.String,
    "path": pl.String,  # absolute path of the image file; null when the dataset has no image folder
}

# One row per human reference caption: the queries of text-to-image, the gallery of image-to-text.
REFERENCES = {
    "caption_id": pl.Int64,  # the annotation's sentid (or row order for generic files)
    "image_id": pl.String,
    "text": pl.String,
}

# One row per machine-written database text: the merged caption table of every captioner.
CAPTIONS = {
    "image_id": pl.String,
    "captioner": pl.String,
    "prompt": pl.String,
    "variant": pl.Int64,  # sample index for prompts asked for several variants; null otherwise
    "field": pl.String,  # field of a structured output (e.g. rsrt's one_sentence); null for plain text
    "text": pl.String,
    # provenance: where the text came from, enough to reproduce it
    "backend": pl.String,  # import | vllm | openai | transformers
    "model_id": pl.String,
    "model_revision": pl.String,
    "prompt_hash": pl.String,
    "sampling": pl.String,  # JSON of the sampling parameters
    "source": pl.String,  # file (import) or shard (generation) the row came from
    "versions": pl.String,  # JSON of package versions
}


def conform(frame: pl.DataFrame, schema: dict, what: str) -> pl.DataFrame:
    """Return ``frame`` with exactly ``schema``'s columns, in order and types; missing optional
    columns become nulls. Raises a TrsllavaError naming ``what`` and the column on a type problem."""
    expressions = []
    for name, dtype in schema.items():
        if name not in frame.columns:
            expressions.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        try:
            frame.get_column(name).cast(dtype, strict=True)
        except Exception as exc:  # polars raises several error types for bad casts
            raise TrsllavaError(f"{what}: column '{name}' cannot be read as {dtype}: {exc}") from exc
        expressions.append(pl.col(name).cast(dtype, strict=True))
    return frame.select(expressions)
