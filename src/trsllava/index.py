"""FAISS indexes over a caption set's embeddings: exact inner product by default, HNSW or IVF on request.

Evaluation never depends on an approximate index: it scores exactly (see evaluation.protocol). An
approximate index is for searching large archives, so building one also measures what it gives up:
its recall@k against the exact index, with the dataset's human captions as queries.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_json
from .errors import TrsllavaError

log = logging.getLogger(__name__)
INDEX_FILE = "index.faiss"
REPORT_FILE = "index.json"


def _faiss():
    import faiss  # faiss-cpu or faiss-gpu, whichever is installed

    return faiss


def build_index(vectors: np.ndarray, options: dict):
    faiss = _faiss()
    kind = options.get("type", "flat")
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(options.get("hnsw_m", 32)), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(options.get("ef_construction", 200))
        index.hnsw.efSearch = int(options.get("ef_search", 128))
    elif kind == "ivf":
        nlist = int(options.get("nlist") or max(1, round(4 * math.sqrt(len(vectors)))))
        nlist = min(nlist, len(vectors))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(int(options.get("nprobe", 16)), nlist)
    else:
        raise TrsllavaError(f"config: index.type '{kind}' is not one of flat, hnsw, ivf")
    index.add(vectors)
    return index


def ann_recall(index, exact, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k neighbours that the index also returns in its top k."""
    k = min(k, exact.ntotal)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)]))


def write_index(vectors: np.ndarray, query_vectors: np.ndarray | None, options: dict, out_dir: Path) -> dict:
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    started = time.perf_counter()
    index = build_index(vectors, options)
    report = {"type": options.get("type", "flat"), "ntotal": int(index.ntotal), "dim": int(vectors.shape[1]),
              "build_seconds": round(time.perf_counter() - started, 3), "faiss": faiss.__version__}
    if report["type"] != "flat" and query_vectors is not None and len(query_vectors):
        k = int(options.get("recall_k", 10))
        sample = np.ascontiguousarray(query_vectors[: int(options.get("recall_queries", 1000))], dtype=np.float32)
        report[f"recall_at_{k}_vs_exact"] = ann_recall(index, build_index(vectors, {"type": "flat"}), sample, k)
        log.info("%s index: recall@%d against the exact index %.4f", report["type"], k, report[f"recall_at_{k}_vs_exact"])
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    write_json(report, out_dir / REPORT_FILE)
    return report


def load_index(out_dir: Path, use_gpu: bool = True):
    """Read an index; moved to the GPUs when faiss-gpu sees any (exact search is then much faster)."""
    faiss = _faiss()
    index = faiss.read_index(str(out_dir / INDEX_FILE))
    if use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    return index
