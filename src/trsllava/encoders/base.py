"""The encoder interface every retrieval stage relies on.

An encoder turns a list of *unique* texts into a saved ``Representation`` (the embeddings of one
dataset x text table x encoder). Two representations then score each other in blocks:
``queries.scores_against(documents, rows)`` is a dense (len(rows) x len(documents)) float32 block,
which keeps the evaluator independent of whether scores come from a dot product or from BM25.

Roles. A text is embedded either as a *query* or as a *document*; asymmetric encoders (instruction
or prefix models such as E5 "query: " / "passage: ", or APIs with an input type) give different
vectors for the two roles. The two retrieval directions swap them: text-to-image queries are the
human captions and documents the generated texts; image-to-text queries are the generated texts and
documents the human captions. So every representation holds both roles (one matrix when the encoder
is symmetric) and ``scores_against`` takes the query role from ``self`` and the document role from
``documents``.

Two kinds of encoder:
  ``VectorEncoder``  each text maps to one vector on its own (no corpus statistics), so vectors are
                     cached per text (encoders.cache), embedded in resumable shard jobs
                     (encoders.store) and shared across caption sets and datasets;
  other ``Encoder``  (BM25) build a whole-table index in ``represent`` and cache nothing per text.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ..atomic import write_parquet

TEXTS_FILE = "texts.parquet"
Role = Literal["query", "document"]
ROLES: tuple[Role, Role] = ("query", "document")


class Representation(abc.ABC):
    """Unique texts plus whatever the encoder needs to score them (vectors, a lexical index)."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    @abc.abstractmethod
    def scores_against(self, documents: "Representation", rows: np.ndarray) -> np.ndarray:
        """Scores of the texts ``rows`` of self (as queries) against every text of ``documents``
        (as documents): float32, shape (len(rows), len(documents))."""


class Encoder(abc.ABC):
    kind: str

    def __init__(self, name: str, entry: dict):
        self.name = name
        self.entry = entry

    @abc.abstractmethod
    def represent(self, texts: list[str], directory: Path) -> None:
        """Encode unique ``texts`` and save the representation under ``directory``."""

    def describe(self) -> dict:
        """What identifies this encoder's output (written beside the representation, shown in reports)."""
        return {"name": self.name, "type": self.kind, **self.entry}


class VectorEncoder(Encoder):
    """An encoder whose vector for a text depends on that text, the role and the encoder alone.

    To add one: subclass, set ``kind``, implement ``fingerprint`` and ``embed``, register it in
    ``registry.ENCODER_TYPES``. The shard jobs, the per-text cache, the merged memory-mapped matrix,
    FAISS indexes and the evaluator then work unchanged. ``embed`` is called once per cache batch
    (config ``cache_batch_size`` texts) and each batch is written to the cache as soon as it returns,
    so a killed job, or a rerun, never asks for a finished text again (``embed_batches``: several
    batches in flight at once).
    """

    @abc.abstractmethod
    def fingerprint(self, role: Role) -> dict:
        """Everything that determines the vectors ``embed(texts, role)`` returns, as a JSON-able dict:
        type, the resolved model and its weights (content hash or commit, never a local path, so that
        a cache can be shared between machines), backend, dimensions, normalisation, and the role's
        prompt or input type. Not the role's *name*: two roles with equal fingerprints share one cache
        and one matrix (a symmetric encoder). Not what leaves the vectors unchanged (batch size,
        device, an endpoint's port or path, thread count; an API's host is in, as its model name alone
        does not pin the weights). Must be cheap and must not load the model (shard jobs
        whose texts are all cached never load it)."""

    @abc.abstractmethod
    def embed(self, texts: list[str], role: Role) -> np.ndarray:
        """Vectors of ``texts`` in ``role``: float32, shape (len(texts), d), rows unit-normalised
        (cosine similarity as inner product, what FAISS IndexFlatIP and the evaluator expect). Loads
        the model on first use. No progress bar: the caller shows one over its batches."""

    def embed_batches(self, batches: list[list[str]], role: Role) -> Iterator[tuple[int, np.ndarray]]:
        """``(index into batches, vectors)`` for each batch, yielded as soon as it is ready; the store
        writes each to the cache on arrival. The default embeds the batches one after the other; an
        encoder that runs several at once (requests to an embeddings API) overrides this and yields
        in completion order, so that a crash loses only the requests still in flight."""
        for number, texts in enumerate(batches):
            yield number, self.embed(texts, role)

    @property
    def symmetric(self) -> bool:
        """Whether queries and documents get the same vectors (then one cache and one matrix)."""
        return self.fingerprint("query") == self.fingerprint("document")

    def close(self) -> None:
        """Release the model (GPU memory, server sessions); ``embed`` loads it again if called."""

    def represent(self, texts: list[str], directory: Path, cache_root: Path | None = None) -> None:
        """One-job path: fill the per-text cache (``cache_root``; a throwaway one when None) with
        every text of ``texts`` and write the representation from it. The workflow instead fills
        the cache in shard jobs and merges (encoders.store)."""
        import tempfile

        from .store import fill_cache, write_representation

        with tempfile.TemporaryDirectory(prefix="trsllava-embeddings-") as scratch:
            root = Path(cache_root) if cache_root is not None else Path(scratch)
            report = fill_cache(self, texts, root, batch_size=int(self.entry.get("cache_batch_size", 1024)))
            write_representation(self.name, list(dict.fromkeys(texts)), report["roles"], root, Path(directory), self.describe())


def save_texts(texts: list[str], directory: Path) -> None:
    write_parquet(pl.DataFrame({"text": texts}, schema={"text": pl.String}), directory / TEXTS_FILE)


def load_texts(directory: Path) -> list[str]:
    return pl.read_parquet(directory / TEXTS_FILE)["text"].to_list()
