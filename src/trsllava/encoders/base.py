"""The encoder interface every retrieval stage relies on.

An encoder turns a list of *unique* texts into a saved ``Representation`` (the embedding cache of one
dataset x caption set x encoder). Two representations then score each other in blocks:
``queries.scores_against(documents, rows)`` is a dense (len(rows) x len(documents)) float32 block,
which keeps the evaluator independent of whether scores come from a dot product or from BM25.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import polars as pl

from ..atomic import write_parquet

TEXTS_FILE = "texts.parquet"


class Representation(abc.ABC):
    """Unique texts plus whatever the encoder needs to score them (vectors, a lexical index)."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    @abc.abstractmethod
    def scores_against(self, documents: "Representation", rows: np.ndarray) -> np.ndarray:
        """Scores of the texts ``rows`` of self (as queries) against every text of ``documents``."""


class Encoder(abc.ABC):
    kind: str

    def __init__(self, name: str, entry: dict):
        self.name = name
        self.entry = entry

    @abc.abstractmethod
    def represent(self, texts: list[str], directory: Path) -> None:
        """Encode unique ``texts`` and save the representation under ``directory``."""

    def describe(self) -> dict:
        """What identifies this encoder's output (written beside the cache, shown in reports)."""
        return {"name": self.name, "type": self.kind, **self.entry}


def save_texts(texts: list[str], directory: Path) -> None:
    write_parquet(pl.DataFrame({"text": texts}, schema={"text": pl.String}), directory / TEXTS_FILE)


def load_texts(directory: Path) -> list[str]:
    return pl.read_parquet(directory / TEXTS_FILE)["text"].to_list()
