"""The typed, columnar tables that flow between stages, and their checks.

Every stage reads and writes polars frames with exactly these schemas, so a stage written later
(the VLM captioning backends) produces the very same caption table that the importer does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .errors import TrsllavaError
from .textio import read_json, read_jsonl, read_text, type_name

JSON_ROWS = (".jsonl", ".ndjson", ".json")
ROW_FORMATS = (*JSON_ROWS, ".csv", ".parquet")


@dataclass
class Records:
    """The rows of a row file as Python values, with where each came from (for messages)."""

    path: Path
    what: str  # "caption file", "annotation file", ...
    rows: list[dict]
    places: list[str]  # "line 3" (JSON Lines), "item 3" (JSON array), "row 3" (CSV data row, parquet row)
    header: list[str] | None = None  # the columns of a CSV or parquet file (JSON: the rows' keys)

    def at(self, index: int) -> str:
        """'<what> <path>, line 7': where row ``index`` is, to start an error message."""
        return f"{self.what} {self.path}, {self.places[index]}"

    @property
    def columns(self) -> list[str]:
        if self.header is not None:
            return list(self.header)
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)


def read_records(path: Path, what: str = "caption file") -> Records:
    """Read a row file: JSON Lines (.jsonl, .ndjson), a JSON array of objects (.json), CSV or parquet.

    Text files go through ``textio`` (a byte-order mark and CRLF line ends are accepted). CSV values
    stay strings and header names are stripped of surrounding spaces. Raises TrsllavaError naming the
    file (and the line, for JSON) when it is missing, has another extension, or does not parse."""
    path = Path(path)
    if not path.is_file():
        raise TrsllavaError(f"{what} not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows, lines = read_jsonl(path, what)
        return Records(path, what, rows, [f"line {n}" for n in lines])
    if suffix == ".json":
        document = read_json(path, what)
        if not isinstance(document, list) or not all(isinstance(row, dict) for row in document):
            found = type_name(document) if not isinstance(document, list) else "an array with a non-object item"
            raise TrsllavaError(f"{what} {path}: expected a JSON array of objects (one per row), found {found}")
        return Records(path, what, document, [f"item {i}" for i in range(len(document))])
    if suffix == ".csv":
        text = read_text(path, what)
        frame = _polars_read(lambda: pl.read_csv(io.BytesIO(text.encode("utf-8")), infer_schema=False), path, what)
        names = [name.strip() for name in frame.columns]
        if len(set(names)) != len(names):
            raise TrsllavaError(f"{what} {path}: duplicate column names in the header {frame.columns}")
        frame.columns = names
    elif suffix == ".parquet":
        frame = _polars_read(lambda: pl.read_parquet(path), path, what)
    else:
        raise TrsllavaError(f"{what} {path}: unsupported extension '{path.suffix}' (use one of {list(ROW_FORMATS)})")
    rows = _polars_read(frame.to_dicts, path, what)
    return Records(path, what, rows, [f"row {i + 1}" for i in range(len(rows))], list(frame.columns))


def _polars_read(read, path: Path, what: str):
    try:
        return read()
    except (Exception, pl.exceptions.PanicException) as exc:  # polars raises many kinds of parse errors (and panics)
        raise TrsllavaError(f"{what} {path}: not readable: {' '.join(str(exc).split())[:300]}") from None


def require_columns(records: Records, required: list[str]) -> None:
    """TrsllavaError naming the file and the columns found when a required column is missing."""
    columns = records.columns
    missing = [name for name in required if name not in columns]
    if missing:
        raise TrsllavaError(f"{records.what} {records.path}: missing column(s) {missing}; found {columns}")


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
