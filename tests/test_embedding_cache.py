"""The per-text embedding cache, the deterministic shards and the merge into a representation.

Most tests drive the store with a stub encoder whose vectors are a hash of (prompt, text) and that
records every text it is asked to embed, so "nothing is embedded twice" is counted, not inferred;
the sentence-transformers encoder is checked against a direct encoding at the end.
"""

import hashlib
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from trsllava.encoders import VectorEncoder, build_encoder, load_representation
from trsllava.encoders.cache import EmbeddingCache, fingerprint_id, text_keys
from trsllava.encoders.dense import DenseRepresentation
from trsllava.encoders.store import ROLE_FILES, VECTORS_FILE, fill_cache, shard_texts, write_representation
from trsllava.errors import TrsllavaError

DIM = 8


def stub_vector(prompt: str | None, text: str) -> np.ndarray:
    digest = hashlib.sha256(f"{prompt}\0{text}".encode()).digest()
    vector = np.frombuffer(digest[: DIM * 4], dtype="<u4").astype(np.float64) - 2**31
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class StubEncoder(VectorEncoder):
    """Vectors from a hash; entry ``prompts`` {query, document} makes it asymmetric; ``fail_after``
    N calls raises (a job killed mid-way)."""

    kind = "stub"

    def __init__(self, name="stub", entry=None):
        super().__init__(name, entry or {"type": "stub"})
        self.calls: list[tuple[str, list[str]]] = []

    def prompt(self, role):
        return (self.entry.get("prompts") or {}).get(role)

    def fingerprint(self, role):
        return {"type": self.kind, "weights": "sha256:stub", "dimensions": DIM, "normalized": True, "prompt": self.prompt(role)}

    def embed(self, texts, role):
        if "fail_after" in self.entry and len(self.calls) >= self.entry["fail_after"]:
            raise RuntimeError("killed")
        self.calls.append((role, list(texts)))
        return np.stack([stub_vector(self.prompt(role), t) for t in texts])

    def embedded(self) -> list[str]:
        return [t for _, texts in self.calls for t in texts]


TEXTS = [f"{i} airplanes parked near a terminal" for i in range(50)]
SYMMETRIC = {"type": "stub"}
ASYMMETRIC = {"type": "stub", "prompts": {"query": "query: ", "document": "passage: "}}


def test_text_keys_are_128_bit_blake2b_of_utf8():
    keys = text_keys(["a", "église", "a"])
    assert keys.shape == (3, 2) and keys.dtype == np.dtype("<u8")
    assert keys[0].tobytes() == hashlib.blake2b(b"a", digest_size=16).digest()
    assert keys[1].tobytes() == hashlib.blake2b("église".encode("utf-8"), digest_size=16).digest()
    assert (keys[0] == keys[2]).all() and not (keys[0] == keys[1]).all()


def test_fingerprint_id_ignores_key_order_and_sees_every_value():
    fingerprint = {"type": "t", "weights": "sha256:x", "prompt": None}
    assert fingerprint_id(fingerprint) == fingerprint_id(dict(reversed(fingerprint.items())))
    assert fingerprint_id(fingerprint) == hashlib.sha256(b'{"prompt":null,"type":"t","weights":"sha256:x"}').hexdigest()[:16]
    assert fingerprint_id({**fingerprint, "prompt": "query: "}) != fingerprint_id(fingerprint)


def test_shards_partition_the_distinct_texts_whatever_the_table_order():
    table = TEXTS + TEXTS[:10]  # repeated texts are one text
    parts = [shard_texts(table, i, 3) for i in range(3)]
    assert sorted(t for part in parts for t in part) == sorted(TEXTS)
    assert all(parts) and sum(len(p) for p in parts) == len(TEXTS)
    # another order, or another caption set holding some of the texts: same shard, same order
    assert [shard_texts(list(reversed(table)), i, 3) for i in range(3)] == parts
    other_set = ["a river", *TEXTS[::7]]
    for i in range(3):
        assert [t for t in shard_texts(other_set, i, 3) if t in TEXTS] == [t for t in parts[i] if t in other_set]
    with pytest.raises(TrsllavaError, match="shard 3 is not in 0..2"):
        shard_texts(table, 3, 3)


def test_a_text_is_embedded_once_across_batches_reruns_and_tables(tmp_path):
    encoder = StubEncoder()
    report = fill_cache(encoder, TEXTS, tmp_path, batch_size=16, progress=False)
    assert [len(texts) for _, texts in encoder.calls] == [16, 16, 16, 2]
    assert sorted(encoder.embedded()) == sorted(TEXTS)
    (stats,) = report["caches"].values()
    assert (stats["cached"], stats["encoded"], stats["roles"], stats["dimension"]) == (0, 50, "query+document", DIM)

    encoder.calls.clear()
    again = fill_cache(encoder, TEXTS, tmp_path, batch_size=16, progress=False)  # a rerun: nothing to do
    assert encoder.calls == [] and list(again["caches"].values())[0]["cached"] == 50

    other_table = TEXTS[:20] + ["a river crossing farmland", "a stadium"]  # another caption set or dataset
    fill_cache(encoder, other_table, tmp_path, batch_size=16, progress=False)
    assert sorted(encoder.embedded()) == ["a river crossing farmland", "a stadium"]
    cache = EmbeddingCache(tmp_path, "stub", encoder.fingerprint("query"))
    assert cache.stats() == {"chunks": 5, "rows": 52, "distinct": 52}


def test_representation_from_the_cache_matches_direct_vectors(tmp_path):
    encoder = StubEncoder()
    table = ["b", "a", "c", "a"]
    report = fill_cache(encoder, table, tmp_path / "cache", batch_size=2, progress=False)
    write_representation("stub", ["b", "a", "c"], report["roles"], tmp_path / "cache", tmp_path / "rep", encoder.describe())
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["embeddings.npy", "encoder.json", "texts.parquet"]
    rep = DenseRepresentation.load(tmp_path / "rep")
    assert rep.symmetric and rep.texts == ["b", "a", "c"]
    assert isinstance(rep.vectors, np.memmap) and rep.vectors.dtype == np.float32
    np.testing.assert_array_equal(rep.vectors, np.stack([stub_vector(None, t) for t in ["b", "a", "c"]]))


def test_asymmetric_encoder_keeps_both_roles_and_scores_query_against_document(tmp_path):
    encoder = StubEncoder(entry=ASYMMETRIC)
    assert not encoder.symmetric
    captions, humans = ["planes at a gate", "a river"], ["many planes", "water", "a river"]
    for name, texts in (("captions", captions), ("humans", humans)):
        report = fill_cache(encoder, texts, tmp_path / "cache", batch_size=4, progress=False)
        write_representation("stub", texts, report["roles"], tmp_path / "cache", tmp_path / name, encoder.describe())
    # "a river" is in both tables: embedded once per role, not once per table
    assert sorted(encoder.embedded()) == sorted(captions * 2 + ["many planes", "water"] * 2)
    assert sorted(p.name for p in (tmp_path / "captions").iterdir()) == sorted([*ROLE_FILES.values(), "encoder.json", "texts.parquet"])
    caps, hums = DenseRepresentation.load(tmp_path / "captions"), DenseRepresentation.load(tmp_path / "humans")
    query = lambda t: stub_vector("query: ", t)  # noqa: E731
    document = lambda t: stub_vector("passage: ", t)  # noqa: E731
    # text-to-image: human captions are queries, generated texts documents; image-to-text the reverse
    t2i = hums.scores_against(caps, np.array([0, 2]))
    np.testing.assert_allclose(t2i, [[query(h) @ document(c) for c in captions] for h in ("many planes", "a river")], rtol=1e-6)
    i2t = caps.scores_against(hums, np.array([1]))
    np.testing.assert_allclose(i2t, [[query("a river") @ document(h) for h in humans]], rtol=1e-6)
    assert i2t[0, 2] != pytest.approx(1.0)  # same text, different roles: not the same vector
    with pytest.raises(TrsllavaError, match="asymmetric encoder: use query_vectors or document_vectors"):
        caps.vectors


def test_an_empty_table_or_shard_embeds_nothing(tmp_path):
    encoder = StubEncoder()
    report = fill_cache(encoder, [], tmp_path / "cache", progress=False)
    assert encoder.calls == [] and list(report["caches"].values())[0]["encoded"] == 0
    assert sorted(len(shard_texts(["one text"], i, 4)) for i in range(4)) == [0, 0, 0, 1]  # three empty shards
    write_representation("stub", [], report["roles"], tmp_path / "cache", tmp_path / "rep", encoder.describe())
    rep = DenseRepresentation.load(tmp_path / "rep")
    assert rep.texts == [] and rep.vectors.shape == (0, 0)


def test_killed_fill_keeps_finished_batches_and_resumes_without_recomputation(tmp_path):
    killed = StubEncoder(entry={"type": "stub", "fail_after": 2})
    with pytest.raises(RuntimeError, match="killed"):
        fill_cache(killed, TEXTS, tmp_path, batch_size=16, progress=False)
    finished = killed.embedded()
    assert len(finished) == 32
    # a job killed between its vectors and its keys file leaves an orphan that no reader lists
    cache = EmbeddingCache(tmp_path, "stub", killed.fingerprint("query"))
    orphan = cache.chunks_dir / "0000dead.vectors.npy"
    np.save(orphan, np.zeros((3, DIM), dtype=np.float32))
    (cache.chunks_dir / ".x.keys.npy.abc.tmp").write_bytes(b"torn")  # an interrupted atomic write

    resumed = StubEncoder()
    report = fill_cache(resumed, TEXTS, tmp_path, batch_size=16, progress=False)
    assert sorted(resumed.embedded()) == sorted(set(TEXTS) - set(finished))
    assert list(report["caches"].values())[0]["cached"] == 32
    assert cache.stats() == {"chunks": 4, "rows": 50, "distinct": 50}  # every text embedded exactly once
    write_representation("stub", TEXTS, report["roles"], tmp_path, tmp_path / "rep", resumed.describe())
    np.testing.assert_array_equal(DenseRepresentation.load(tmp_path / "rep").vectors, np.stack([stub_vector(None, t) for t in TEXTS]))


def test_batches_finished_out_of_order_are_each_stored_under_their_own_texts(tmp_path):
    """An encoder running batches concurrently (an API client) yields them in completion order; a
    crash after some of them keeps exactly those."""

    class Concurrent(StubEncoder):
        def embed_batches(self, batches, role):
            for number in reversed(range(len(batches))):  # the last one finished first
                if self.entry.get("fail_after") == len(self.calls):
                    raise RuntimeError("killed")
                yield number, self.embed(batches[number], role)

    with pytest.raises(RuntimeError, match="killed"):
        fill_cache(Concurrent(entry={"type": "stub", "fail_after": 2}), TEXTS[:40], tmp_path, batch_size=10, progress=False)
    cache = EmbeddingCache(tmp_path, "stub", StubEncoder().fingerprint("query"))
    assert cache.stats() == {"chunks": 2, "rows": 20, "distinct": 20}
    resumed = Concurrent()
    report = fill_cache(resumed, TEXTS[:40], tmp_path, batch_size=10, progress=False)
    assert len(resumed.embedded()) == 20 and list(report["caches"].values())[0]["cached"] == 20
    out = np.zeros((40, DIM), dtype=np.float32)
    cache.gather(text_keys(TEXTS[:40]), out)
    np.testing.assert_array_equal(out, np.stack([stub_vector(None, t) for t in TEXTS[:40]]))


def _fill_in_subprocess(root, texts):
    fill_cache(StubEncoder(), texts, Path(root), batch_size=5, progress=False)


def test_concurrent_jobs_share_a_cache_without_locks(tmp_path):
    """Processes fill overlapping text sets at once: duplicates are stored, read once, and every
    text has its vector."""
    sets = [TEXTS[i * 10:i * 10 + 30] for i in range(4)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        pool.starmap(_fill_in_subprocess, [(str(tmp_path), s) for s in sets])
    cache = EmbeddingCache(tmp_path, "stub", StubEncoder().fingerprint("query"))
    stats = cache.stats()
    assert stats["distinct"] == 50 and stats["rows"] >= 50
    out = np.zeros((len(TEXTS), DIM), dtype=np.float32)
    cache.gather(text_keys(TEXTS), out)
    np.testing.assert_array_equal(out, np.stack([stub_vector(None, t) for t in TEXTS]))


def test_lookup_is_vectorised_over_many_chunks(tmp_path):
    cache = EmbeddingCache(tmp_path, "stub", {"type": "stub"})
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, size=(60_000, 2), dtype=np.int64).astype(np.uint64)
    vectors = rng.normal(size=(60_000, 4)).astype(np.float32)
    for start in range(0, 60_000, 2_000):
        cache.add(keys[start:start + 2_000], vectors[start:start + 2_000])
    pick = rng.permutation(60_000)[:25_000]
    absent = rng.integers(0, 2**63, size=(10, 2), dtype=np.int64).astype(np.uint64)
    found = cache.lookup(np.concatenate([keys[pick], absent]))
    assert found.found[:25_000].all() and not found.found[25_000:].any()
    out = np.empty((25_000, 4), dtype=np.float32)
    cache.gather(keys[pick], out)
    np.testing.assert_array_equal(out, vectors[pick])


def test_missing_texts_and_broken_encoders_are_named(tmp_path):
    encoder = StubEncoder()
    report = fill_cache(encoder, ["a"], tmp_path / "cache", progress=False)
    with pytest.raises(TrsllavaError, match=r"1 of 2 texts for .*rep \(e.g. 'b'\) are not in the embedding cache .*stub/"):
        write_representation("stub", ["a", "b"], report["roles"], tmp_path / "cache", tmp_path / "rep", encoder.describe())

    class Unnormalised(StubEncoder):
        def embed(self, texts, role):
            return 2 * super().embed(texts, role)

    with pytest.raises(TrsllavaError, match=r"encoder 'stub' \(stub\) returned vectors that are not unit-normalised"):
        fill_cache(Unnormalised(), ["x"], tmp_path / "other", progress=False)

    class WrongShape(StubEncoder):
        def embed(self, texts, role):
            return super().embed(texts, role)[:1]

    with pytest.raises(TrsllavaError, match=r"returned vectors of shape \(1, 8\) for 2 texts"):
        fill_cache(WrongShape(), ["x", "y"], tmp_path / "other", progress=False)
    assert EmbeddingCache(tmp_path / "other", "stub", encoder.fingerprint("query")).stats()["rows"] == 0  # nothing bad stored


# -- the sentence-transformers encoder -------------------------------------------------------------

def test_sentence_transformer_fingerprint_names_the_weights_not_their_location(tmp_path):
    from trsllava.encoders.weights import ALIASES

    minilm = build_encoder("m", {"type": "sentence-transformers", "model": "minilm"})
    fingerprint = minilm.fingerprint("query")
    assert fingerprint == {"type": "sentence-transformers", "model": ALIASES["minilm"]["hub_id"],
                           "weights": f"sha256:{ALIASES['minilm']['sha256']}", "backend": "torch", "dimensions": None,
                           "normalized": True, "prompt": None, "model_kwargs": {}}
    assert minilm.symmetric
    # runtime settings leave the vectors, hence the cache, alone; dimensions and backend do not
    same = build_encoder("other-name", {"type": "sentence-transformers", "model": "minilm", "batch_size": 8, "device": "cpu"})
    assert same.fingerprint("document") == fingerprint
    assert build_encoder("m", {"type": "sentence-transformers", "model": "minilm", "dimensions": 64}).fingerprint("query") != fingerprint

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    local = lambda: build_encoder("l", {"type": "sentence-transformers", "model": str(folder)}).fingerprint("query")  # noqa: E731
    before = local()
    assert before["model"] is None and before["weights"].startswith("folder-sha256:") and str(tmp_path) not in str(before)
    (folder / "README.md").write_text("notes")
    assert local() == before
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert local() != before


def test_hub_model_not_in_the_cache_is_one_clear_error():
    with pytest.raises(TrsllavaError, match=r"encoder model 'nobody/no-such-encoder': cannot resolve it on the Hugging Face hub"):
        build_encoder("x", {"type": "sentence-transformers", "model": "nobody/no-such-encoder"}).fingerprint("query")


def test_minilm_through_the_cache_equals_a_direct_encoding(tmp_path):
    entry = {"type": "sentence-transformers", "model": "minilm", "batch_size": 4, "cache_batch_size": 3}
    texts = ["many planes are parked at the airport", "a river runs through green farmland", "a baseball field",
             "storage tanks beside a port", "a dense residential area", "the"]
    encoder = build_encoder("minilm", entry)
    encoder.represent(texts, tmp_path / "rep", cache_root=tmp_path / "cache")
    rep = load_representation("minilm", entry, tmp_path / "rep")
    direct = encoder.embed(texts, "document")  # one call, one batch, the model already loaded
    assert rep.texts == texts and rep.vectors.shape == (6, 384)
    np.testing.assert_allclose(rep.vectors, direct, atol=2e-6)
    cache = EmbeddingCache(tmp_path / "cache", "sentence-transformers", encoder.fingerprint("query"))
    assert cache.stats() == {"chunks": 2, "rows": 6, "distinct": 6}
    assert (tmp_path / "rep" / VECTORS_FILE).is_file()
