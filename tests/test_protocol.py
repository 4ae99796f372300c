"""The blocked evaluator on a scene worked out by hand, and against a naive implementation."""

import numpy as np
import polars as pl
import pytest

from reference_protocol import naive_evaluate
from trsllava.encoders.dense import DenseRepresentation
from trsllava.evaluation.caption_sets import caption_set_views
from trsllava.evaluation.metrics import recalls
from trsllava.evaluation.protocol import Protocol, Settings

# Three images; B and C share one generated text (an exact tie), image A has two texts, and A's
# second human caption is the same text as B's (a duplicate reference, as in RSICD).
REF = {"ra": [1.0, 0.0], "rb": [0.0, 1.0], "rc": [0.6, 0.8]}
GEN = {"g1": [1.0, 0.0], "g2": [0.0, 1.0], "g3": [0.8, 0.6]}
IMAGES = pl.DataFrame({"image_id": ["A", "B", "C"], "filename": ["A", "B", "C"], "split": "test", "path": None},
                      schema={"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String})
REFERENCES = pl.DataFrame({"caption_id": [0, 1, 2, 3], "image_id": ["A", "A", "B", "C"], "text": ["ra", "rb", "rb", "rc"]})
CAPTIONS = pl.DataFrame(
    {"image_id": ["A", "A", "B", "C"], "prompt": "p", "variant": [0, 1, 0, 0], "field": None, "text": ["g1", "g2", "g3", "g3"]},
    schema_overrides={"field": pl.String},
)


def representation(table):
    return DenseRepresentation(list(table), np.array(list(table.values()), dtype=np.float32))


def run(aggregation, memory_mb=512.0):
    protocol = Protocol(IMAGES, REFERENCES, "test", representation(REF), representation(GEN),
                        Settings(aggregations=(aggregation,), memory_mb=memory_mb, progress=False))
    views = [protocol.view(label, rows) for label, rows in caption_set_views(CAPTIONS)]
    stats = pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)])
    return stats, recalls(stats)


def counts(stats, direction):
    part = stats.filter(pl.col("direction") == direction).sort("query")
    return dict(zip(part["query"], zip(part["above"], part["tied_other"], part["tied_relevant"])))


@pytest.mark.parametrize("memory_mb", [512.0, 1e-6])  # one block, and one query per block
def test_max_by_hand(memory_mb):
    stats, values = run("max", memory_mb)
    # t2i: ra -> A=1, B=C=.8; rb(A) -> A=1; rb(B) -> B=.6 below A=1, tied with C; rc -> B=C=.96 tie
    assert counts(stats, "t2i") == {"0": (0, 0, 1), "1": (0, 0, 1), "2": (1, 1, 1), "3": (0, 1, 1)}
    # i2t: A scores ra=1, rb(A)=1, rb(B)=1, rc=.8; B and C score ra=.8, rb=.6, rb=.6, rc=.96
    assert counts(stats, "i2t") == {"A": (0, 1, 2), "B": (2, 1, 1), "C": (0, 0, 1)}
    assert values["t2i_r1"] == pytest.approx(100 * (1 + 1 + 0 + 0.5) / 4)
    assert values["t2i_r1_optimistic"] == pytest.approx(75.0)
    assert values["t2i_r1_pessimistic"] == pytest.approx(50.0)
    assert values["i2t_r1"] == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)
    assert values["i2t_r5"] == values["t2i_r10"] == pytest.approx(100.0)
    assert values["mR"] == pytest.approx((100 * 5 / 9 + 62.5 + 400) / 6)


def test_mean_by_hand():
    stats, values = run("mean")
    # A's score is now the average of its two texts: ra -> .5 (below B=C=.8), rb -> .5, rc -> .7
    assert counts(stats, "t2i") == {"0": (2, 0, 1), "1": (2, 0, 1), "2": (0, 1, 1), "3": (0, 1, 1)}
    assert values["t2i_r1"] == pytest.approx(25.0)
    # A scores ra=.5, rb=.5, rb=.5, rc=.7: rc above, both own captions tied with B's rb
    assert counts(stats, "i2t")["A"] == (1, 1, 2)


def test_rrf_by_hand():
    stats, _ = run("rrf")
    # query rc: slot 0 ranks B=C (.96) first, A (.6) third; slot 1 holds only A (rank 1):
    # A = 1/63 + 1/61 beats B = C = 1/61, so C has one image above and one tied
    assert counts(stats, "t2i")["3"] == (1, 1, 1)
    # image A: g1 ranks ra 1, rc 2, rb rb 3; g2 ranks rb rb 1, rc 3, ra 4. Fused: rb = 1/63 + 1/61
    # beats ra = 1/61 + 1/64 and rc = 1/62 + 1/63; A's own rb ties with B's rb
    assert counts(stats, "i2t")["A"] == (0, 1, 1)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_agrees_with_naive_implementation(aggregation):
    rng = np.random.default_rng(7)
    n_images, dim = 12, 8
    image_ids = [f"im{i}" for i in range(n_images)]
    # few distinct texts so that duplicates (exact ties) are frequent on both sides
    ref_pool = rng.normal(size=(15, dim)).astype(np.float32)
    gen_pool = rng.normal(size=(10, dim)).astype(np.float32)
    ref_pool /= np.linalg.norm(ref_pool, axis=1, keepdims=True)
    gen_pool /= np.linalg.norm(gen_pool, axis=1, keepdims=True)
    ref_rows = [(image, int(rng.integers(15))) for image in image_ids for _ in range(5)]
    gen_rows = [(image, int(rng.integers(10))) for image in image_ids[:-1] for _ in range(int(rng.integers(1, 4)))]
    images = IMAGES.clear().vstack(pl.DataFrame({"image_id": image_ids, "filename": image_ids, "split": "test", "path": None}, schema=IMAGES.schema))
    references = pl.DataFrame({"caption_id": range(len(ref_rows)), "image_id": [i for i, _ in ref_rows], "text": [f"r{t}" for _, t in ref_rows]})
    captions = pl.DataFrame(
        {"image_id": [i for i, _ in gen_rows], "prompt": "p", "variant": None, "field": None, "text": [f"g{t}" for _, t in gen_rows]},
        schema_overrides={"variant": pl.Int64, "field": pl.String},
    )
    protocol = Protocol(
        images, references, "test",
        DenseRepresentation([f"r{i}" for i in range(15)], ref_pool),
        DenseRepresentation([f"g{i}" for i in range(10)], gen_pool),
        Settings(aggregations=(aggregation,), memory_mb=0.01, progress=False),
    )
    views = [protocol.view("p", captions)]
    values = recalls(pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)]))
    naive = naive_evaluate(
        [ref_pool[t] for _, t in ref_rows], [i for i, _ in ref_rows],
        [gen_pool[t] for _, t in gen_rows], [i for i, _ in gen_rows], image_ids, how=aggregation,
    )
    for key, expected in naive.items():
        assert values[key] == pytest.approx(expected, abs=1e-9), key
