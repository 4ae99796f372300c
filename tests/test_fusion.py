"""Fused retrieval: reciprocal-rank fusion of encoders on a scene worked out by hand, against a naive
implementation, its config checks; and the `fused` caption set as score-level fusion of prompts."""

import numpy as np
import polars as pl
import pytest
from scipy.stats import rankdata

from reference_protocol import naive_fusion_evaluate
from trsllava.encoders.base import Representation
from trsllava.encoders.dense import DenseRepresentation
from trsllava.errors import TrsllavaError
from trsllava.evaluation.caption_sets import caption_set_views
from trsllava.evaluation.fusion import FusedProtocol, FusionSpec, check_fusions, competition_ranks, fusion_spec, rrf_scores
from trsllava.evaluation.metrics import recalls
from trsllava.evaluation.protocol import Protocol, Settings


class TableRepresentation(Representation):
    """A stub encoder: the score of two texts is looked up in a chosen table (symmetric)."""

    def __init__(self, texts, table):
        super().__init__(list(texts))
        self.table = table

    def scores_against(self, documents, rows):
        def score(a, b):
            return self.table[(a, b)] if (a, b) in self.table else self.table[(b, a)]

        return np.array([[score(self.texts[r], d) for d in documents.texts] for r in rows], dtype=np.float32)


def table(rows, columns, values):
    return {(r, c): float(v) for r, line in zip(rows, values) for c, v in zip(columns, line)}


def gallery(image_ids):
    return pl.DataFrame({"image_id": image_ids, "filename": image_ids, "split": "test", "path": None},
                        schema={"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String})


def stats_of(evaluator, views):
    return pl.concat([evaluator.text_to_image(views), evaluator.image_to_text(views)])


def counts(stats, direction):
    part = stats.filter(pl.col("direction") == direction).sort("query")
    return dict(zip(part["query"], zip(part["above"], part["tied_other"], part["tied_relevant"])))


# -- ranks -------------------------------------------------------------------------------------------

def test_competition_ranks_by_hand():
    scores = np.array([[0.9, 0.5, 0.9, 0.2], [0.9, 0.9 + 1e-8, 0.5, -np.inf]])
    # row 0: the two 0.9 share rank 1 (min rank), 0.5 is third, 0.2 fourth
    assert competition_ranks(scores[:1]).tolist() == [[1, 3, 1, 4]]
    # row 1 exactly: 0.9 + 1e-8 is alone on top; within the tolerance 1e-6 the two share rank 1;
    # an uncaptioned image (-inf) ranks last
    assert competition_ranks(scores[1:]).tolist() == [[2, 1, 3, 4]]
    assert competition_ranks(scores[1:], 1e-6).tolist() == [[1, 1, 3, 4]]
    assert competition_ranks(np.array([[-np.inf, 1.0, -np.inf]])).tolist() == [[2, 1, 2]]


def test_competition_ranks_without_tolerance_are_scipy_min_ranks():
    scores = np.random.default_rng(3).integers(0, 5, size=(20, 30)).astype(float)  # many ties
    assert np.array_equal(competition_ranks(scores), rankdata(-scores, method="min", axis=1))


# -- the hand-worked scene -----------------------------------------------------------------------------
# Three images A, B, C with one generated text each (ga, gb, gc); human captions ra (A), rb and rb2
# (B), rc (C). Two stub encoders score (human caption, generated text):
#
#   dense   ga  gb  gc        lexical  ga  gb  gc
#   ra      .9  .5  .1        ra        2   0   0
#   rb      .6  .6  .2        rb        0   3   1
#   rb2     .2  .7  .8        rb2       0   3   2
#   rc      .3  .4  .7        rc        0   0   4
#
# Fusion with k = 0 and unit weights: fused = 1 / rank_dense + 1 / rank_lexical, competition ranks.
REFS = ["ra", "rb", "rb2", "rc"]
GENS = ["ga", "gb", "gc"]
DENSE = table(REFS, GENS, [[.9, .5, .1], [.6, .6, .2], [.2, .7, .8], [.3, .4, .7]])
LEXICAL = table(REFS, GENS, [[2, 0, 0], [0, 3, 1], [0, 3, 2], [0, 0, 4]])
SCENE_REFERENCES = pl.DataFrame({"caption_id": [0, 1, 2, 3], "image_id": ["A", "B", "B", "C"], "text": REFS})
SCENE_CAPTIONS = pl.DataFrame({"image_id": ["A", "B", "C"], "prompt": "p", "variant": None, "field": None, "text": GENS},
                              schema_overrides={"variant": pl.Int64, "field": pl.String})


def scene(weights=(1.0, 1.0), k=0.0, aggregation="max"):
    settings = Settings(aggregations=(aggregation,), progress=False)
    protocols = [Protocol(gallery(["A", "B", "C"]), SCENE_REFERENCES, "test", TableRepresentation(REFS, t),
                          TableRepresentation(GENS, t), settings) for t in (DENSE, LEXICAL)]
    views = [[p.view(label, rows) for label, rows in caption_set_views(SCENE_CAPTIONS)] for p in protocols]
    fused = FusedProtocol(protocols, FusionSpec("dense+lexical", ("dense", "lexical"), tuple(weights), k))
    return fused, protocols, views


def test_fusion_by_hand():
    fused, _, views = scene()
    stats = stats_of(fused, views)
    # text-to-image (candidates: images A, B, C), ranks (dense; lexical) -> fused:
    #   ra : A (1; 1) = 2,   B (2; 2) = 1,       C (3; 2) = 5/6      own A first: (0, 0, 1)
    #   rb : A (1; 3) = 4/3, B (1; 1) = 2,       C (3; 2) = 5/6      dense ties A and B at rank 1 (min rank)
    #   rb2: A (3; 3) = 2/3, B (2; 1) = 3/2,     C (1; 2) = 3/2      the encoders disagree: B and C tie
    #   rc : A (3; 2) = 5/6, B (2; 2) = 1,       C (1; 1) = 2
    assert counts(stats, "t2i") == {"0": (0, 0, 1), "1": (0, 0, 1), "2": (0, 1, 1), "3": (0, 0, 1)}
    # the fused scores of rb themselves: min ranks give A 1/1 + 1/3 (average ranks would give 1/1.5 + 1/3)
    rb = rrf_scores([np.array([[.6, .6, .2]]), np.array([[0, 3, 1]])], (1.0, 1.0), 0.0, 1e-6)
    assert rb[0].tolist() == pytest.approx([4 / 3, 2, 5 / 6])
    # image-to-text (candidates: the four human captions), ranks (dense; lexical) -> fused:
    #   A: ra (1; 1) = 2,   rb (2; 2) = 1,     rb2 (4; 2) = 3/4,  rc (3; 2) = 5/6     lexical ties rb, rb2, rc at 2
    #   B: ra (3; 3) = 2/3, rb (2; 1) = 3/2,   rb2 (1; 1) = 2,    rc (4; 3) = 7/12    own rb2 first
    #   C: ra (4; 4) = 1/2, rb (3; 3) = 2/3,   rb2 (1; 2) = 3/2,  rc (2; 1) = 3/2     own rc tied with rb2
    assert counts(stats, "i2t") == {"A": (0, 0, 1), "B": (0, 0, 1), "C": (0, 1, 1)}
    values = recalls(stats)
    assert values["t2i_r1"] == pytest.approx(87.5)  # (1 + 1 + 1/2 + 1) / 4
    assert values["t2i_r1_optimistic"] == pytest.approx(100.0) and values["t2i_r1_pessimistic"] == pytest.approx(75.0)
    assert values["i2t_r1"] == pytest.approx(100 * 2.5 / 3)  # (1 + 1 + 1/2) / 3
    assert values["i2t_r1_pessimistic"] == pytest.approx(200 / 3)
    assert values["t2i_r5"] == values["i2t_r5"] == values["i2t_r10"] == pytest.approx(100.0)
    assert values["mR"] == pytest.approx((250 / 3 + 87.5 + 400) / 6)
    # the naive fusion agrees on the scene
    S = [[[t[(r, g)] for g in GENS] for r in REFS] for t in (DENSE, LEXICAL)]
    naive = naive_fusion_evaluate(S, (1, 1), 0, ["A", "B", "B", "C"], ["A", "B", "C"], [0, 0, 0], ["A", "B", "C"])
    for key, expected in naive.items():
        assert values[key] == pytest.approx(expected, abs=1e-9), key


def test_each_encoder_alone_and_weights():
    fused, protocols, views = scene()
    dense = stats_of(protocols[0], views[0])
    lexical = stats_of(protocols[1], views[1])
    # alone, dense misses rb2 (C .8 above B .7) and lexical ties B and C on it; fused they tie
    assert counts(dense, "t2i")["2"] == (1, 0, 1) and counts(lexical, "t2i")["2"] == (0, 0, 1)
    # weights (1, 0) keep only the dense ranking: the same tie counts as the dense evaluation
    only_dense, _, _ = scene(weights=(1.0, 0.0), k=60.0)
    assert stats_of(only_dense, views).drop("caption_set").equals(dense.drop("caption_set"))
    # weights (1, 3): lexical dominates, rb2 -> B (1/2 + 3) beats C (1 + 3/2): a hit
    heavy, _, _ = scene(weights=(1.0, 3.0))
    assert counts(stats_of(heavy, views), "t2i")["2"] == (0, 0, 1)


@pytest.mark.parametrize("aggregation", ["max", "mean", "rrf"])
@pytest.mark.parametrize("memory_mb", [512.0, 0.01])
def test_agrees_with_naive_fusion(aggregation, memory_mb):
    """Random scene with duplicate texts on both sides, a tie-heavy second encoder (small integer
    vectors: lexical-like), several texts per image in slots, an uncaptioned image."""
    rng = np.random.default_rng(11)
    n_images, n_ref_pool, n_gen_pool = 10, 14, 9
    image_ids = [f"im{i}" for i in range(n_images)]
    dense_ref = rng.normal(size=(n_ref_pool, 6)).astype(np.float32)
    dense_gen = rng.normal(size=(n_gen_pool, 6)).astype(np.float32)
    lex_ref = rng.integers(0, 2, size=(n_ref_pool, 4)).astype(np.float32)
    lex_gen = rng.integers(0, 2, size=(n_gen_pool, 4)).astype(np.float32)
    ref_rows = [(image, int(rng.integers(n_ref_pool))) for image in image_ids for _ in range(3)]
    gen_rows = [(image, slot, int(rng.integers(n_gen_pool))) for image in image_ids[:-1]
                for slot in range(int(rng.integers(1, 4)))]
    references = pl.DataFrame({"caption_id": range(len(ref_rows)), "image_id": [i for i, _ in ref_rows],
                               "text": [f"r{t}" for _, t in ref_rows]})
    captions = pl.DataFrame(
        {"image_id": [i for i, _, _ in gen_rows], "prompt": "p", "variant": [s for _, s, _ in gen_rows], "field": None,
         "text": [f"g{t}" for _, _, t in gen_rows]},
        schema_overrides={"variant": pl.Int64, "field": pl.String},
    )
    settings = Settings(aggregations=(aggregation,), memory_mb=memory_mb, progress=False)
    ref_texts, gen_texts = [f"r{i}" for i in range(n_ref_pool)], [f"g{i}" for i in range(n_gen_pool)]
    protocols = [
        Protocol(gallery(image_ids), references, "test", DenseRepresentation(ref_texts, r), DenseRepresentation(gen_texts, g), settings)
        for r, g in ((dense_ref, dense_gen), (lex_ref, lex_gen))
    ]
    views = [[p.view("p", captions)] for p in protocols]
    weights, k = (1.0, 0.5), 60.0
    values = recalls(stats_of(FusedProtocol(protocols, FusionSpec("f", ("d", "l"), weights, k)), views))
    S_list = [[[float(np.dot(r[rt], g[gt])) for _, _, gt in gen_rows] for _, rt in ref_rows]
              for r, g in ((dense_ref, dense_gen), (lex_ref, lex_gen))]
    naive = naive_fusion_evaluate(S_list, weights, k, [i for i, _ in ref_rows], [i for i, _, _ in gen_rows],
                                  [s for _, s, _ in gen_rows], image_ids, how=aggregation)
    for key, expected in naive.items():
        assert values[key] == pytest.approx(expected, abs=1e-9), key


# -- config ------------------------------------------------------------------------------------------

CONFIG = {"encoders": {"minilm": {}, "bm25": {}}, "evaluation": {"rrf_k": 30}}


def test_fusion_spec_defaults_and_errors():
    spec = fusion_spec({**CONFIG, "fusions": {"minilm+bm25": {"encoders": ["minilm", "bm25"]}}}, "minilm+bm25")
    assert spec == FusionSpec("minilm+bm25", ("minilm", "bm25"), (1.0, 1.0), 30.0, "rrf")  # k from evaluation.rrf_k
    bad = {
        "f": ({"encoders": ["minilm", "clip"]}, "config: fusions.f.encoders names unknown encoder(s) ['clip']"),
        "g": ({"encoders": ["minilm"]}, "config: fusions.g.encoders needs at least two distinct encoders"),
        "h": ({"encoders": ["minilm", "bm25"], "weights": [1]}, "config: fusions.h.weights has 1 value(s) for 2 encoders"),
        "minilm": ({"encoders": ["minilm", "bm25"]}, "config: fusions.minilm: the name 'minilm' is already an encoder's"),
        "z": ({"encoders": ["minilm", "bm25"], "weights": [0, 0]}, "config: fusions.z.weights must be non-negative and not all zero"),
    }
    for name, (entry, message) in bad.items():
        with pytest.raises(TrsllavaError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            check_fusions({**CONFIG, "fusions": {name: entry}})


# -- the `fused` caption set: score-level fusion of a captioner's prompts ----------------------------
# Images A and B, prompts p and q with one text each (pA, pB, qA, qB); human captions ra (A), rb (B).
PQ_REFS, PQ_GENS = ["ra", "rb"], ["pA", "pB", "qA", "qB"]
PQ = table(PQ_REFS, PQ_GENS, [[.3, .5, .9, .2], [.1, .4, .2, .3]])
PQ_CAPTIONS = pl.DataFrame({"image_id": ["A", "B", "A", "B"], "prompt": ["p", "p", "q", "q"], "variant": None,
                            "field": None, "text": PQ_GENS}, schema_overrides={"variant": pl.Int64, "field": pl.String})


@pytest.mark.parametrize(
    "aggregation, ra_counts",
    [
        ("max", (0, 0, 1)),   # ra: A = max(.3, .9) = .9 beats B = max(.5, .2) = .5 (prompt p alone misses it)
        ("mean", (0, 0, 1)),  # ra: A = (.3 + .9) / 2 = .6 beats B = .35
        ("rrf", (0, 1, 1)),   # ra: slot p ranks B 1, A 2; slot q ranks A 1, B 2: A = B = 1/61 + 1/62, a tie
    ],
)
def test_fused_caption_set_fuses_prompt_scores_by_hand(aggregation, ra_counts):
    protocol = Protocol(gallery(["A", "B"]), pl.DataFrame({"caption_id": [0, 1], "image_id": ["A", "B"], "text": PQ_REFS}),
                        "test", TableRepresentation(PQ_REFS, PQ), TableRepresentation(PQ_GENS, PQ),
                        Settings(aggregations=(aggregation,), progress=False))
    views = [protocol.view(label, rows) for label, rows in caption_set_views(PQ_CAPTIONS)]
    assert [v.label for v in views] == ["p", "q", "fused"]
    scores = {view.label: s for view, _, s in protocol.t2i_scores(np.array([0, 1]), views)}
    if aggregation == "max":  # the best text of any prompt: the elementwise max of the prompts' scores
        assert np.array_equal(scores["fused"], np.maximum(scores["p"], scores["q"]))
    elif aggregation == "mean":  # the mean of all texts (here one per prompt: the mean of the prompts)
        assert np.allclose(scores["fused"], (scores["p"] + scores["q"]) / 2)
    else:  # every (prompt, variant, field) slot is one ranker: the sum of the prompts' fusions
        assert np.allclose(scores["fused"], scores["p"] + scores["q"])
    stats = stats_of(protocol, views).filter(pl.col("caption_set") == "fused")
    assert counts(stats, "t2i")["0"] == ra_counts
    assert counts(stats_of(protocol, views).filter(pl.col("caption_set") == "p"), "t2i")["0"] == (1, 0, 1)
