"""The query bank of a dataset: human-written queries that are *not* the evaluated ones, whose scores
give hubness-aware scoring its statistics (``evaluation/hubness.py``).

``datasets.<name>.query_bank`` in config, one of:

  {split: train}                   the human captions of another split of the same annotations
                                   (the default for karpathy and generic datasets: split train)
  {dataset: other, split: train}   the human captions of a split of another dataset of config
  {file: path}                     a text file of queries, one per line (.txt), or a CSV / JSONL /
                                   parquet file with a ``caption`` (or ``text``) column and an
                                   optional ``filename`` column grouping captions by image
  {file: builtin}                  the bank packaged with trsllava (the default for the built-in
                                   sample): RSICD train human captions, see its README

The bank table has one row per bank caption: ``group`` (its image, or the line number of a text
file) and ``text``; a bank split equal to the evaluated split is refused (the evaluated queries
would be their own bank: label that as a transductive normalization instead).
"""

from __future__ import annotations

import dataclasses
import logging
from importlib import resources
from pathlib import Path

import polars as pl

from ..errors import TrsllavaError
from ..tables import read_records
from ..textio import read_text
from .load import DatasetSpec, load_dataset

log = logging.getLogger(__name__)

BUILTIN_BANK = Path(str(resources.files("trsllava") / "data" / "query_bank" / "rsicd_train_bank.jsonl"))
BANK_COLUMNS = {"group": pl.String, "text": pl.String}
KEYS = ("split", "dataset", "file")


def bank_entry(config: dict, dataset: str) -> dict:
    """The dataset's ``query_bank`` entry with its default filled in, checked."""
    entry = config["datasets"][dataset]
    bank = dict(entry.get("query_bank") or {})
    where = f"config: datasets.{dataset}.query_bank"
    unknown = sorted(set(bank) - set(KEYS))
    if unknown:
        raise TrsllavaError(f"{where}: unknown key(s) {unknown}; allowed: {list(KEYS)}")
    if not bank:
        bank = {"file": "builtin"} if entry["format"] == "builtin" else {"split": "train"}
    if "file" in bank and set(bank) != {"file"}:
        raise TrsllavaError(f"{where}: `file` stands alone (no split or dataset), got {sorted(bank)}")
    if "dataset" in bank and bank["dataset"] not in config["datasets"]:
        raise TrsllavaError(f"{where}.dataset '{bank['dataset']}' is not a dataset of config; known: {sorted(config['datasets'])}")
    return bank


def _split_spec(config: dict, dataset: str, bank: dict) -> DatasetSpec:
    """The dataset spec whose split is the bank (no image folder: bank captions need no image)."""
    source = bank.get("dataset", dataset)
    spec = DatasetSpec.from_config(source, config["datasets"][source])
    split = bank.get("split", "train")
    evaluated = DatasetSpec.from_config(dataset, config["datasets"][dataset])
    if spec.annotations == evaluated.annotations and split == evaluated.split:
        raise TrsllavaError(
            f"config: datasets.{dataset}.query_bank takes split '{split}' of {spec.annotations}, the evaluated split itself: "
            "such statistics are transductive. Use another split, or a normalization with `bank: transductive` (labelled so)"
        )
    if spec.annotations == evaluated.annotations and evaluated.gallery == "all":
        log.warning("dataset %s: gallery all holds the query bank's split '%s' too: its captions are gallery items", dataset, split)
    return dataclasses.replace(spec, split=split, gallery="split", images=None)


def load_query_bank(config: dict, dataset: str) -> tuple[pl.DataFrame, str]:
    """(bank table: group, text; a one-line description of its source)."""
    bank = bank_entry(config, dataset)
    if "file" in bank:
        path = BUILTIN_BANK if bank["file"] == "builtin" else Path(bank["file"]).expanduser()
        table, source = read_bank_file(path), f"file {path}"
    else:
        spec = _split_spec(config, dataset, bank)
        _, references = load_dataset(spec)
        table = references.select(pl.col("image_id").alias("group"), pl.col("text"))
        source = f"split {spec.split} of {spec.annotations}"
    table = table.with_columns(pl.col("text").str.strip_chars()).filter(pl.col("text").str.len_chars() > 0)
    if table.is_empty():
        raise TrsllavaError(f"query bank of dataset '{dataset}' ({source}) holds no query")
    return table.select(BANK_COLUMNS.keys()).cast(BANK_COLUMNS), source


def read_bank_file(path: Path) -> pl.DataFrame:
    """A text file (one query per line, its line number as group) or a table with caption/text and
    optional filename columns."""
    if not path.is_file():
        raise TrsllavaError(f"query bank file not found: {path}")
    if path.suffix.lower() == ".txt":
        # through textio like every text file: a byte-order mark, CRLF, an undecodable byte named
        lines = read_text(path, "query bank file").splitlines()
        return pl.DataFrame({"group": [str(i) for i in range(len(lines))], "text": lines}, schema=BANK_COLUMNS)
    records = read_records(path, what="query bank file")
    columns = records.columns
    column = "caption" if "caption" in columns else "text" if "text" in columns else None
    if column is None:
        raise TrsllavaError(f"query bank file {path}: needs a 'caption' or 'text' column; found {columns}")
    texts, groups = [], []
    for i, row in enumerate(records.rows):
        text = row.get(column)
        if text is None or not str(text).strip():  # a blank caption is no query
            continue
        texts.append(str(text))
        groups.append(str(row["filename"]) if row.get("filename") is not None else str(i))
    return pl.DataFrame({"group": groups, "text": texts}, schema=BANK_COLUMNS)
