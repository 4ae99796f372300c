"""Encoder registry, offline weight aliases and their checks, and both encoder types end to end."""

from pathlib import Path

import numpy as np
import pytest

from trsllava.encoders import build_encoder, load_representation
from trsllava.encoders.weights import ALIASES, resolve_model, sha256_of, verify
from trsllava.errors import TrsllavaError


def test_minilm_alias_resolves_to_verified_packaged_weights():
    folder = Path(resolve_model("minilm"))
    assert (folder / "modules.json").is_file()
    assert sha256_of(folder / "model.safetensors") == ALIASES["minilm"]["sha256"]


def test_tampered_weights_are_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not the upstream weights")
    with pytest.raises(TrsllavaError, match=r"model.safetensors has sha256 .* expected 53aa5117"):
        verify(tmp_path, "minilm")


def test_unknown_alias_and_missing_folder_are_named():
    with pytest.raises(TrsllavaError, match=r"unknown encoder alias 'minilmx'.*\['minilm', 'mpnet'\]"):
        resolve_model("minilmx")
    with pytest.raises(TrsllavaError, match=r"encoder model folder not found: ./no/such/model"):
        resolve_model("./no/such/model")
    with pytest.raises(TrsllavaError, match=r"encoders.x.type is 'word2vec'"):
        build_encoder("x", {"type": "word2vec"})


def test_minilm_representation_roundtrip(tmp_path):
    entry = {"type": "sentence-transformers", "model": "minilm", "batch_size": 2}
    texts = ["many planes are parked at the airport", "a river runs through green farmland", "a baseball field"]
    build_encoder("minilm", entry).represent(texts, tmp_path)
    rep = load_representation("minilm", entry, tmp_path)
    assert rep.texts == texts and rep.vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(rep.vectors, axis=1), 1.0, atol=1e-5)
    block = rep.scores_against(rep, np.array([0, 1]))
    assert block.shape == (2, 3) and block[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert block[0, 0] > block[0, 1] and block[1, 1] > block[1, 2]


def test_bm25_scores_are_lexical_and_directional(tmp_path):
    entry = {"type": "bm25"}
    docs, queries = tmp_path / "docs", tmp_path / "queries"
    build_encoder("bm25", entry).represent(["planes parked near the runway", "a river and trees", "trees trees trees"], docs)
    build_encoder("bm25", entry).represent(["where are the planes", "trees"], queries)
    d, q = load_representation("bm25", entry, docs), load_representation("bm25", entry, queries)
    block = q.scores_against(d, np.array([0, 1]))
    assert block.shape == (2, 3)
    assert block[0, 0] > 0 and block[0, 1] == 0 and block[0, 2] == 0  # only doc 0 says "planes"
    assert block[1, 0] == 0 and block[1, 2] > block[1, 1] > 0  # term frequency saturates but still ranks
    reverse = d.scores_against(q, np.array([0, 1, 2]))
    assert reverse.shape == (3, 2)


def test_bm25_text_without_any_token_scores_zero_in_both_directions(tmp_path):
    """A generated caption of stopwords or punctuation only ("the", ".") has no BM25 token: as a
    query it matches nothing, as a document it is never matched (a real small VLM wrote such texts)."""
    entry = {"type": "bm25"}
    docs, queries = tmp_path / "docs", tmp_path / "queries"
    build_encoder("bm25", entry).represent(["planes near the runway", "the", "."], docs)
    build_encoder("bm25", entry).represent(["planes", "the"], queries)
    d, q = load_representation("bm25", entry, docs), load_representation("bm25", entry, queries)
    block = q.scores_against(d, np.array([0, 1]))
    assert block[0, 0] > 0 and block[0, 1:].tolist() == [0.0, 0.0]
    assert block[1].tolist() == [0.0, 0.0, 0.0]
    assert d.scores_against(q, np.array([0, 1, 2]))[1:].tolist() == [[0.0, 0.0], [0.0, 0.0]]
