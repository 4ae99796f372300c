"""The typed, columnar tables that flow between stages, and their checks.

Every stage reads and writes polars frames with exactly these schemas, so a stage written later
(the VLM captioning backends) produces the very same caption table that the importer does.
"""

from __future__ import annotations

import polars as pl

from .errors import TrsllavaError

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
