"""FAISS indexes: exact by default, approximate kinds measured against the exact one."""

import json

import numpy as np
import pytest

from trsllava.errors import TrsllavaError
from trsllava.index import INDEX_FILE, REPORT_FILE, load_index, write_index


def unit_vectors(n, dim=16, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_flat_index_is_exact_inner_product(tmp_path):
    vectors, queries = unit_vectors(200), unit_vectors(5, seed=1)
    report = write_index(vectors, queries, {"type": "flat"}, tmp_path)
    assert report["ntotal"] == 200 and (tmp_path / INDEX_FILE).stat().st_size > 0
    scores, ids = load_index(tmp_path).search(queries, 3)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :3]
    assert np.array_equal(ids, truth)
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, truth, axis=1), atol=1e-5)


@pytest.mark.parametrize("options", [{"type": "hnsw", "hnsw_m": 16, "ef_search": 64}, {"type": "ivf", "nlist": 8, "nprobe": 8}])
def test_approximate_indexes_report_recall_against_exact(tmp_path, options):
    report = write_index(unit_vectors(500), unit_vectors(50, seed=2), options, tmp_path)
    saved = json.loads((tmp_path / REPORT_FILE).read_text())
    assert saved == report
    # IVF probing every list is exhaustive, hence exact; HNSW at this size finds nearly everything
    assert report["recall_at_10_vs_exact"] == pytest.approx(1.0, abs=0.05 if options["type"] == "hnsw" else 1e-9)


def test_unknown_index_type_is_named(tmp_path):
    with pytest.raises(TrsllavaError, match="index.type 'lsh'"):
        write_index(unit_vectors(10), None, {"type": "lsh"}, tmp_path)
