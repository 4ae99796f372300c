"""The per-text embedding cache: a text is embedded once per encoder fingerprint, whatever caption
set, dataset or job it comes from.

Layout (``root`` is config ``embedding_cache``, by default ``<results>/cache/embeddings``)::

    <root>/<encoder type>/<fingerprint id>/fingerprint.json     what the vectors depend on
    <root>/<encoder type>/<fingerprint id>/chunks/<id>.vectors.npy   float32 (n, d)
    <root>/<encoder type>/<fingerprint id>/chunks/<id>.keys.npy      uint64 (n, 2): the texts' keys

The fingerprint id is the first 16 hex digits of the SHA-256 of the fingerprint's canonical JSON; a
text's key is its 128-bit BLAKE2b digest (UTF-8), as two little-endian uint64 (a collision among a
billion texts has probability about 1e-21). Each batch of embedded texts becomes one chunk: the
vectors file first, then the keys file, each written atomically (trsllava.atomic); the keys file is
the commit mark, so a chunk whose keys file exists is whole, and a job killed between the two leaves
only an orphan vectors file, which no reader lists. Chunk ids are random (uuid4), so any number of
concurrent jobs, on any number of nodes sharing the folder, add chunks without locks; a text that two
jobs embedded at the same time is stored twice and read once (the first chunk in name order wins).

Lookup is vectorised: the keys of every chunk (16 bytes a text, read memory-mapped) form one table
that is hash-joined (polars) with the requested keys; vectors are then read from each chunk's
memory-mapped file with sorted row indices, so memory stays at one output matrix however large the
cache grows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..atomic import write_json, write_npy
from ..errors import TrsllavaError

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
CHUNKS_DIR = "chunks"
KEYS_SUFFIX = ".keys.npy"
VECTORS_SUFFIX = ".vectors.npy"


def fingerprint_id(fingerprint: dict) -> str:
    """A short stable name for a fingerprint: SHA-256 of its canonical JSON, 16 hex digits."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def text_keys(texts: list[str]) -> np.ndarray:
    """128-bit BLAKE2b keys of ``texts`` (UTF-8): uint64 array of shape (len(texts), 2)."""
    digests = b"".join(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest() for text in texts)
    return np.frombuffer(digests, dtype="<u8").reshape(len(texts), 2).copy()


class MissingEmbeddings(TrsllavaError):
    """Texts asked for that the cache does not hold; ``positions`` index the requested keys."""

    def __init__(self, cache: "EmbeddingCache", positions: np.ndarray, requested: int):
        super().__init__(f"embedding cache {cache.directory}: {len(positions)} of {requested} texts are not cached")
        self.cache = cache
        self.positions = positions


@dataclass
class Lookup:
    """Where each requested key is: ``chunk`` (index into ``chunks``, -1 when absent) and ``row``."""

    chunks: list[Path]  # the keys files of the chunks, in name order
    chunk: np.ndarray  # int64 (n,)
    row: np.ndarray  # int64 (n,)

    @property
    def found(self) -> np.ndarray:
        return self.chunk >= 0


class EmbeddingCache:
    """The cached vectors of one encoder fingerprint (see the module docstring for the layout)."""

    def __init__(self, root: Path, kind: str, fingerprint: dict):
        self.fingerprint = fingerprint
        self.id = fingerprint_id(fingerprint)
        self.directory = Path(root) / kind / self.id
        self.chunks_dir = self.directory / CHUNKS_DIR

    def __repr__(self) -> str:
        return f"EmbeddingCache({self.directory})"

    def ensure(self) -> None:
        """Create the folder and its fingerprint.json (written once; equal for every writer)."""
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        marker = self.directory / FINGERPRINT_FILE
        if not marker.is_file():
            write_json(self.fingerprint, marker)

    def chunk_files(self) -> list[Path]:
        """Keys files of the committed chunks, in name order."""
        if not self.chunks_dir.is_dir():
            return []
        return sorted(self.chunks_dir.glob(f"*{KEYS_SUFFIX}"))

    def _index(self) -> tuple[list[Path], pl.DataFrame]:
        """One row per distinct cached key: hi, lo, chunk, row (first chunk in name order wins)."""
        files = self.chunk_files()
        parts = []
        for number, path in enumerate(files):
            keys = np.load(path, mmap_mode="r")
            if keys.ndim != 2 or keys.shape[1] != 2 or keys.dtype != np.dtype("<u8"):
                raise TrsllavaError(f"embedding cache chunk {path} is not an (n, 2) uint64 key array: delete it")
            parts.append(pl.DataFrame({
                "hi": np.asarray(keys[:, 0]), "lo": np.asarray(keys[:, 1]),
                "chunk": np.full(len(keys), number, dtype=np.int64), "row": np.arange(len(keys), dtype=np.int64),
            }))
        if not parts:
            empty = pl.DataFrame(schema={"hi": pl.UInt64, "lo": pl.UInt64, "chunk": pl.Int64, "row": pl.Int64})
            return files, empty
        return files, pl.concat(parts).unique(subset=["hi", "lo"], keep="first", maintain_order=True)

    def lookup(self, keys: np.ndarray) -> Lookup:
        """Locate ``keys`` (uint64 (n, 2), from ``text_keys``) in the cache."""
        files, index = self._index()
        wanted = pl.DataFrame({"hi": keys[:, 0], "lo": keys[:, 1]}).with_row_index("position")
        joined = wanted.join(index, on=["hi", "lo"], how="left").sort("position")
        return Lookup(files, joined["chunk"].fill_null(-1).to_numpy().astype(np.int64),
                      joined["row"].fill_null(-1).to_numpy().astype(np.int64))

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        """Write one chunk (vectors, then keys as the commit mark); returns its keys file."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(keys):
            raise TrsllavaError(f"embedding cache {self.directory}: {len(keys)} texts but vectors of shape {vectors.shape}")
        self.ensure()
        name = uuid.uuid4().hex
        write_npy(vectors, self.chunks_dir / f"{name}{VECTORS_SUFFIX}")
        keys_file = self.chunks_dir / f"{name}{KEYS_SUFFIX}"
        write_npy(np.ascontiguousarray(keys, dtype="<u8"), keys_file)
        return keys_file

    def gather(self, keys: np.ndarray, out: np.ndarray) -> None:
        """Copy the cached vectors of ``keys`` into ``out`` (float32 (n, d), e.g. a memory-mapped
        .npy being written). Every key must be cached: a missing one is an error naming how many."""
        found = self.lookup(keys)
        missing = np.flatnonzero(~found.found)
        if len(missing):
            raise MissingEmbeddings(self, missing, len(keys))
        for number in np.unique(found.chunk):
            positions = np.flatnonzero(found.chunk == number)
            rows = found.row[positions]
            order = np.argsort(rows, kind="stable")  # ascending rows: sequential reads of the mapped file
            vectors = np.load(_vectors_file(found.chunks[number]), mmap_mode="r")
            if vectors.ndim != 2 or vectors.shape[1] != out.shape[1]:
                raise TrsllavaError(f"embedding cache chunk {_vectors_file(found.chunks[number])} holds vectors of shape "
                                    f"{vectors.shape}, expected dimension {out.shape[1]}: delete the chunk")
            out[positions[order]] = vectors[rows[order]]

    def dimension(self) -> int | None:
        """The vectors' dimension (None while the cache is empty)."""
        files = self.chunk_files()
        if not files:
            return None
        return int(np.load(_vectors_file(files[0]), mmap_mode="r").shape[1])

    def stats(self) -> dict:
        """Chunks, stored rows and distinct texts: rows > distinct means some text was embedded twice
        (concurrent jobs); rows == distinct, that every text was embedded once."""
        files, index = self._index()
        rows = sum(int(np.load(path, mmap_mode="r").shape[0]) for path in files)
        return {"chunks": len(files), "rows": rows, "distinct": index.height}


def _vectors_file(keys_file: Path) -> Path:
    return keys_file.with_name(keys_file.name[: -len(KEYS_SUFFIX)] + VECTORS_SUFFIX)
