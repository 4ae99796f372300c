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
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ..atomic import write_parquet

TEXTS_FILE = "texts.parquet"
TOKENS_FILE = "tokens.npy"  # int32 (n,): each text's length in the encoder's tokens, beside texts.parquet
ENCODER_FILE = "encoder.json"
Role = Literal["query", "document"]
ROLES: tuple[Role, Role] = ("query", "document")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenCounts:
    """How much of each text an encoder sees: ``limit``, the most tokens it reads of a text (None: no
    limit, e.g. BM25); ``lengths``, int32 (n,), each text's length in its tokens, special tokens and
    any role prompt included (None: unknown or not applicable). A text longer than ``limit`` is cut
    to its first ``limit`` tokens before it is embedded: its tail is not seen."""

    limit: int | None = None
    lengths: np.ndarray | None = None

    @property
    def known(self) -> bool:
        return self.limit is not None and self.lengths is not None

    def over(self, rows: np.ndarray | None = None) -> int | None:
        """How many of the texts ``rows`` (all when None) exceed the limit; None without a limit."""
        if not self.known:
            return None
        lengths = self.lengths if rows is None else self.lengths[np.asarray(rows, dtype=np.int64)]
        return int(np.count_nonzero(lengths > self.limit))

    def metadata(self, texts: int) -> dict:
        """The counts written to a representation's encoder.json."""
        return {"token_limit": self.limit, "truncated": self.over(), "texts": int(texts)}

    def log(self, encoder_name: str, source: object, texts: int) -> None:
        """One line saying how many of ``source``'s texts the encoder cuts (a warning when any)."""
        if self.limit is None:
            log.info("encoder %s: no token limit, all %d texts of %s are read whole", encoder_name, texts, source)
            return
        over = self.over()
        if over is None:
            return
        (log.warning if over else log.info)(
            "encoder %s: %d of %d texts of %s exceed its %d-token limit and are cut to it", encoder_name, over, texts,
            source, self.limit,
        )


def load_token_counts(directory: Path) -> TokenCounts:
    """The token counts saved with a representation (``encoder.json``'s ``token_limit`` and
    ``tokens.npy``); empty (unknown) for a representation written before they were recorded."""
    directory = Path(directory)
    metadata = directory / ENCODER_FILE
    limit = json.loads(metadata.read_text(encoding="utf-8")).get("token_limit") if metadata.is_file() else None
    lengths = np.load(directory / TOKENS_FILE) if (directory / TOKENS_FILE).is_file() else None
    return TokenCounts(None if limit is None else int(limit), lengths)


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

    def token_counts(self, texts: list[str]) -> TokenCounts:
        """The encoder's token limit and each of ``texts``' length in its tokens (``TokenCounts``).
        The default: no limit (a lexical index reads every text whole). Must not load the model:
        representations are assembled from the embedding cache without it."""
        return TokenCounts()


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
            unique = list(dict.fromkeys(texts))
            tokens = self.token_counts(unique)
            tokens.log(self.name, directory, len(unique))
            write_representation(self.name, unique, report["roles"], root, Path(directory), self.describe(), tokens=tokens)


def save_texts(texts: list[str], directory: Path) -> None:
    write_parquet(pl.DataFrame({"text": texts}, schema={"text": pl.String}), directory / TEXTS_FILE)


def load_texts(directory: Path) -> list[str]:
    return pl.read_parquet(directory / TEXTS_FILE)["text"].to_list()
