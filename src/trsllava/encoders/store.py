"""Sharded, resumable embedding through the per-text cache, and the merge into one representation.

Like captioning, a large text table is embedded by ``shards`` independent jobs, then merged:

  shard job  ``shard_texts``: its share of the table's distinct texts, chosen by key (so the same text
             is in the same shard whatever the table's order, and in every caption set and dataset),
             ordered by key; ``fill_cache``: embeds the texts not yet cached, one cache chunk per
             batch, so a killed job keeps every finished batch and its rerun encodes only the rest;
  merge job  ``write_representation``: texts.parquet (the table's distinct texts, first-seen order),
             one memory-mapped float32 matrix per distinct role fingerprint, gathered from the
             cache (no model needed), and tokens.npy (each text's length in the encoder's tokens,
             from its tokenizer alone) with the count of texts over the token limit in encoder.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_path, write_json
from ..errors import TrsllavaError
from .base import ENCODER_FILE, ROLES, TOKENS_FILE, Role, TokenCounts, VectorEncoder, save_texts
from .cache import EmbeddingCache, MissingEmbeddings, text_keys

log = logging.getLogger(__name__)

VECTORS_FILE = "embeddings.npy"  # symmetric encoders: one matrix for both roles
ROLE_FILES = {"query": "embeddings.query.npy", "document": "embeddings.document.npy"}  # asymmetric ones


def shard_of(keys: np.ndarray, shards: int) -> np.ndarray:
    """The shard (0..shards-1) of each text key (uint64 (n, 2)): the key's first word mod shards."""
    return (keys[:, 0] % np.uint64(shards)).astype(np.int64)


def shard_texts(texts: list[str], shard: int, shards: int) -> list[str]:
    """The distinct texts of shard ``shard`` of ``shards``, ordered by key: the same set and order
    whatever the order or repetitions of ``texts``; about len/shards texts each (keys are uniform)."""
    if shards < 1 or not 0 <= shard < shards:
        raise TrsllavaError(f"embedding shard {shard} is not in 0..{shards - 1}")
    unique = list(dict.fromkeys(texts))
    keys = text_keys(unique)
    mine = np.flatnonzero(shard_of(keys, shards) == shard)
    order = mine[np.lexsort((keys[mine, 1], keys[mine, 0]))]
    return [unique[i] for i in order]


def role_caches(kind: str, fingerprints: dict[str, dict], root: Path) -> dict[Role, EmbeddingCache]:
    return {role: EmbeddingCache(root, kind, fingerprints[role]) for role in ROLES}


def fill_cache(encoder: VectorEncoder, texts: list[str], root: Path, batch_size: int = 1024, progress: bool = True,
               label: str | None = None) -> dict:
    """Embed every text of ``texts`` that the cache under ``root`` lacks, in batches of ``batch_size``
    texts (``encoder.embed_batches``), each written to the cache as one chunk as soon as it is ready.

    Returns the report a shard job writes: per role its fingerprint, and per distinct fingerprint
    (one for a symmetric encoder, two otherwise) how many texts were already cached and how many were
    encoded now. The model is loaded only when something is left to encode."""
    texts = list(dict.fromkeys(texts))
    keys = text_keys(texts)
    label = label or f"encoder {encoder.name}"
    fingerprints = {role: encoder.fingerprint(role) for role in ROLES}
    caches = role_caches(encoder.kind, fingerprints, root)
    report = {"encoder": encoder.name, "type": encoder.kind, "texts": len(texts), "roles": fingerprints,
              "fingerprint_ids": {role: cache.id for role, cache in caches.items()}, "caches": {}}
    for role, cache in caches.items():
        if cache.id in report["caches"]:
            continue  # symmetric: the document role shares the query role's cache
        roles = "+".join(r for r in ROLES if caches[r].id == cache.id)
        pending = np.flatnonzero(~cache.lookup(keys).found)
        log.info("%s, %s: %d distinct texts, %d cached, %d to encode (cache %s)", label, roles, len(texts),
                 len(texts) - len(pending), len(pending), cache.directory)
        with tqdm(total=len(pending), desc=f"embedding {encoder.name} ({roles})", unit="text", disable=not progress) as bar:
            batches = [pending[start:start + batch_size] for start in range(0, len(pending), batch_size)]
            for number, vectors in encoder.embed_batches([[texts[i] for i in batch] for batch in batches], role):
                batch = batches[number]
                cache.add(keys[batch], _checked(encoder, vectors, len(batch)))
                bar.update(len(batch))
        report["caches"][cache.id] = {"roles": roles, "fingerprint": cache.fingerprint, "directory": str(cache.directory),
                                      "cached": int(len(texts) - len(pending)), "encoded": int(len(pending)),
                                      "dimension": cache.dimension()}
    return report


def _checked(encoder: VectorEncoder, vectors, n: int) -> np.ndarray:
    """The interface's promise, checked before anything reaches the shared cache: (n, d) finite float32
    rows of norm 1 (or 0: a text an encoder cannot represent, which then matches nothing)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    where = f"encoder '{encoder.name}' ({encoder.kind})"
    if vectors.ndim != 2 or vectors.shape[0] != n or vectors.shape[1] == 0:
        raise TrsllavaError(f"{where} returned vectors of shape {vectors.shape} for {n} texts; expected ({n}, d)")
    if not np.isfinite(vectors).all():
        raise TrsllavaError(f"{where} returned non-finite values (NaN or inf)")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all((np.abs(norms - 1.0) < 1e-3) | (norms == 0.0)):
        raise TrsllavaError(f"{where} returned vectors that are not unit-normalised (norms {norms.min():.4g}..{norms.max():.4g})")
    return np.ascontiguousarray(vectors)


def write_representation(encoder_name: str, texts: list[str], fingerprints: dict[str, dict], root: Path, directory: Path,
                         description: dict, kind: str | None = None, tokens: TokenCounts | None = None) -> None:
    """Assemble a representation from the cache: ``texts`` (distinct, in the order to keep) go to
    texts.parquet, their vectors to ``embeddings.npy`` (symmetric) or ``embeddings.query.npy`` and
    ``embeddings.document.npy`` (asymmetric), float32 (len(texts), d), written through a memory map
    so that memory stays small at any size. Every text must be cached (``fill_cache`` first).
    ``tokens`` (the encoder's ``token_counts(texts)``): their lengths go to tokens.npy (int32
    (len(texts),)) and the limit and the number of texts over it to encoder.json (``token_limit``,
    ``truncated``, ``texts``; null when the encoder has no limit or ``tokens`` is None)."""
    kind = kind or description["type"]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    caches = role_caches(kind, fingerprints, root)
    symmetric = caches["query"].id == caches["document"].id
    files = {VECTORS_FILE: caches["document"]} if symmetric else {ROLE_FILES[role]: caches[role] for role in ROLES}
    keys = text_keys(texts)
    dims = {}
    for filename, cache in files.items():
        dims[filename] = dim = cache.dimension() or 0
        with atomic_path(directory / filename) as tmp:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim))
            try:
                if len(texts):
                    cache.gather(keys, matrix)
            except MissingEmbeddings as error:
                raise TrsllavaError(
                    f"{len(error.positions)} of {len(texts)} texts for {directory} (e.g. {texts[error.positions[0]]!r}) are not "
                    f"in the embedding cache {cache.directory}: the cache was deleted or the shard outputs are stale; "
                    f"rerun the embedding shards"
                ) from None
            matrix.flush()
            del matrix
    for stale in [VECTORS_FILE, *ROLE_FILES.values()]:
        if stale not in files and (directory / stale).exists():
            (directory / stale).unlink()  # a rerun after the encoder turned (a)symmetric
    tokens = tokens or TokenCounts()
    if tokens.lengths is not None:
        if len(tokens.lengths) != len(texts):
            raise TrsllavaError(f"encoder '{encoder_name}': {len(tokens.lengths)} token lengths for {len(texts)} texts")
        with atomic_path(directory / TOKENS_FILE) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.asarray(tokens.lengths, dtype=np.int32))
    elif (directory / TOKENS_FILE).exists():
        (directory / TOKENS_FILE).unlink()
    save_texts(texts, directory)
    write_json({**description, **tokens.metadata(len(texts)), "name": encoder_name, "symmetric": symmetric, "dim": max(dims.values()),
                "fingerprints": fingerprints, "fingerprint_ids": {role: cache.id for role, cache in caches.items()},
                "cache": str(Path(root))}, directory / ENCODER_FILE)
