"""Hubness-aware scoring (CSLS, inverted softmax, QB-Norm) on a scene worked out by hand, ties
included; against a naive implementation; blocks; the fusion of encoders; the config checks."""

import math

import numpy as np
import polars as pl
import pytest

from reference_protocol import naive_normalized_evaluate, naive_penalties
from trsllava.encoders.base import Representation
from trsllava.encoders.dense import DenseRepresentation
from trsllava.errors import TrsllavaError
from trsllava.evaluation.caption_sets import caption_set_views
from trsllava.evaluation.fusion import FusedProtocol, FusionSpec
from trsllava.evaluation.hubness import ColumnStatistics, Hubness, ItemPenalty, QueryBank, ScaleStatistics
from trsllava.evaluation.metrics import recalls
from trsllava.evaluation.normalization_spec import check_normalizations, normalization_spec
from trsllava.evaluation.protocol import Protocol, Settings


class TableRepresentation(Representation):
    """A stub encoder: the score of two texts is looked up in a chosen table (symmetric)."""

    def __init__(self, texts, table):
        super().__init__(list(texts))
        self.table = table

    def scores_against(self, documents, rows):
        def score(a, b):
            return self.table[(a, b)] if (a, b) in self.table else self.table[(b, a)]

        return np.array([[score(self.texts[r], d) for d in documents.texts] for r in rows], dtype=np.float64)


def table(rows, columns, values):
    return {(r, c): float(v) for r, line in zip(rows, values) for c, v in zip(columns, line)}


def gallery(image_ids):
    return pl.DataFrame({"image_id": image_ids, "filename": image_ids, "split": "test", "path": None},
                        schema={"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String})


def counts(stats, direction, normalization):
    part = stats.filter((pl.col("direction") == direction) & (pl.col("normalization") == normalization)).sort("query")
    return dict(zip(part["query"], zip(part["above"], part["tied_other"], part["tied_relevant"])))


# -- the hand-worked scene ------------------------------------------------------------------------------
# Images A, B, C with one generated text each (ga, gb, gc); human captions ra, rx (A), rb (B), rc (C).
# Bank texts b1, b2 (the query bank). The stub scores (symmetric):
#
#          ga   gb   gc          ra   rx   rb   rc
#   ra     .5   .6   .1     b1   .2   .2   .1   .7
#   rx     .55  .5   .6     b2   .3   .3   .2   .6
#   rb     .2   .7   .3
#   rc     .1   .6   .35
#   b1     .1   .9   .2
#   b2     .3   .8   .4
#
# B is the t2i hub (both bank texts score it best), rc the i2t hub.
REFS = ["ra", "rx", "rb", "rc"]
GENS = ["ga", "gb", "gc"]
BANK = ["b1", "b2"]
SCORES = {
    **table(REFS + BANK, GENS, [[.5, .6, .1], [.55, .5, .6], [.2, .7, .3], [.1, .6, .35], [.1, .9, .2], [.3, .8, .4]]),
    **table(BANK, REFS, [[.2, .2, .1, .7], [.3, .3, .2, .6]]),
}
REFERENCES = pl.DataFrame({"caption_id": [0, 1, 2, 3], "image_id": ["A", "A", "B", "C"], "text": REFS})
CAPTIONS = pl.DataFrame({"image_id": ["A", "B", "C"], "prompt": "p", "variant": None, "field": None, "text": GENS},
                        schema_overrides={"variant": pl.Int64, "field": pl.String})
BANK_TABLE = pl.DataFrame({"group": ["x", "y"], "text": BANK})


def scene(entries, memory_mb=512.0, scores=SCORES, aggregations=("max",)):
    specs = check_normalizations({"normalization": entries})
    protocol = Protocol(gallery(["A", "B", "C"]), REFERENCES, "test", TableRepresentation(REFS, scores),
                        TableRepresentation(GENS, scores), Settings(aggregations=aggregations, memory_mb=memory_mb, progress=False))
    views = [protocol.view(label, rows) for label, rows in caption_set_views(CAPTIONS)]
    bank = QueryBank.from_table(BANK_TABLE, TableRepresentation(BANK, scores))
    hubness = Hubness.prepare(protocol, views, specs, bank)
    stats = pl.concat([protocol.text_to_image(views, hubness), protocol.image_to_text(views, hubness)])
    return stats, hubness


def test_no_normalization_by_hand():
    stats, _ = scene(["none"])
    # ra: B .6 above A .5; rx: C .6 above A .55; rb: B on top; rc: B .6 above C .35
    assert counts(stats, "t2i", "none") == {"0": (1, 0, 1), "1": (1, 0, 1), "2": (0, 0, 1), "3": (1, 0, 1)}


def test_csls_by_hand():
    stats, hubness = scene(["none", {"method": "csls", "k": 1}, {"method": "csls", "k": 2}])
    t2i = hubness.penalties[("t2i", "query-bank")][("p", "max")]
    # k = 1: r(A) = .3, r(B) = .9, r(C) = .4, halved; k = 2: means (.1 + .3) / 2, (.9 + .8) / 2, (.2 + .4) / 2
    assert t2i["csls(k=1)"].penalty == pytest.approx([.15, .45, .2])
    assert t2i["csls(k=2)"].penalty == pytest.approx([.1, .425, .15])
    # k = 1, t2i: ra -> A .35, B .15, C -.1 (a hit); rx -> A .4, B .05, C .4: A and C tie (.55 - .15 =
    # .6 - .2 within the tolerance); rb -> A .05, B .25, C .1; rc -> B .6 - .45 = .15 and
    # C .35 - .2 = .15 tie, A -.05 below
    assert counts(stats, "t2i", "csls(k=1)") == {"0": (0, 0, 1), "1": (0, 1, 1), "2": (0, 0, 1), "3": (0, 1, 1)}
    # i2t, bank texts as pseudo-queries over the human captions: r(ra) = r(rx) = .3, r(rb) = .2,
    # r(rc) = .7 (k = 1). Image A scores ra .35, rx .4, rb .1, rc -.25: its rx on top. Image B:
    # ra .45, rx .35, rb .6, rc .25: hit. Image C: ra -.05, rx .45, rb .2, rc .35 - .35 = 0: its
    # own caption rc, the hub, falls from rank 2 (raw: only rx .6 above .35) to rank 3
    i2t = hubness.penalties[("i2t", "captions")][(None, "max")]
    assert i2t["csls(k=1)"].penalty == pytest.approx([.15, .15, .1, .35])
    assert counts(stats, "i2t", "csls(k=1)") == {"A": (0, 0, 1), "B": (0, 0, 1), "C": (2, 0, 1)}
    assert counts(stats, "i2t", "none") == {"A": (0, 0, 1), "B": (0, 0, 1), "C": (1, 0, 1)}  # rx .6 above rc .35


def test_inverted_softmax_by_hand():
    # t2i bank scores: A (.1, .3), B (.9, .8), C (.2, .4): mean .45, std sqrt(1.75 / 6 - .45^2)
    sigma = math.sqrt(1.75 / 6 - .45 ** 2)
    beta = sigma / 0.1  # the temperature T = sigma / beta is then exactly 0.1
    stats, hubness = scene(["none", {"method": "inverted-softmax", "beta": beta}])
    penalty = hubness.penalties[("t2i", "query-bank")][("p", "max")][f"inverted-softmax(beta={beta:g})"]
    assert penalty.scale == pytest.approx(sigma)
    # T log(mean exp(S / T)) = 0.1 log((e^1 + e^3) / 2), 0.1 (8 + log((e + 1) / 2)), 0.1 (2 + log((1 + e^2) / 2))
    assert penalty.penalty == pytest.approx([.243378, .862012, .343378], abs=1e-6)
    # ra: A .2566, B -.2620, C -.2434 (hit); rx: A .3066, B -.3620, C .2566 (hit); rb: A -.0434,
    # B -.1620, C -.0434: A and C tie within the tolerance (C's bank scores are A's plus .1, so
    # is its penalty), B last at rank 3; rc: C .0066 on top (hit)
    assert counts(stats, "t2i", f"inverted-softmax(beta={beta:g})") == {
        "0": (0, 0, 1), "1": (0, 0, 1), "2": (2, 0, 1), "3": (0, 0, 1)}


def test_qb_norm_by_hand():
    sigma = math.sqrt(1.75 / 6 - .45 ** 2)
    beta = sigma / 0.1
    stats, hubness = scene([{"method": "inverted-softmax", "beta": beta}, {"method": "qb-norm", "beta": beta, "k": 1}])
    label = f"qb-norm(beta={beta:g},k=1)"
    # activation set, top 1 of each bank text: b1 -> B (.9), b2 -> B (.8): {B}
    assert hubness.penalties[("t2i", "query-bank")][("p", "max")][label].active.tolist() == [False, True, False]
    # ra, rb, rc have B (active) on top: normalised as by the inverted softmax. rx has C on top
    # (not active): its raw scores stay, C .6 above A .55, a miss where the inverted softmax hits
    assert counts(stats, "t2i", label) == {"0": (0, 0, 1), "1": (1, 0, 1), "2": (2, 0, 1), "3": (0, 0, 1)}


def test_qb_norm_normalises_a_query_with_an_active_item_among_its_tied_best():
    stats, _ = scene([{"method": "qb-norm", "beta": 1.0, "k": 1}],
                     scores={**SCORES, **table(["rx"], GENS, [[.55, .6, .6]])})
    # rx: B (active) and C tie on top at .6: normalised. C's bank scores are A's plus .1, so is its
    # penalty: A .55 - p beats C .6 - (p + .1); B's penalty (bank scores .9, .8) is larger still
    part = stats.filter((pl.col("direction") == "t2i") & (pl.col("query") == "1"))
    assert part["above"].to_list() == [0]


def test_activation_set_takes_every_item_tied_at_the_kth_score():
    stats = ColumnStatistics(4, 0, [], [1, 2], tolerance=1e-6)
    stats.update(np.array([[.5, .5 + 1e-8, .1, -np.inf], [-np.inf] * 4]))  # second row: no score at all
    assert stats.active[1].tolist() == [True, True, False, False]
    assert stats.active[2].tolist() == [True, True, False, False]
    stats.update(np.array([[.1, .2, .3, .3]]))
    assert stats.active[1].tolist() == [True, True, True, True]


def test_running_statistics_match_one_pass_over_the_whole_bank():
    rng = np.random.default_rng(5)
    bank = rng.normal(scale=30.0, size=(40, 6))  # BM25-like magnitudes: exp(S / T) overflows directly
    bank[3, 2] = -np.inf  # a missing score
    bank[:, 5] = -np.inf  # an item with no score at all (an uncaptioned image)
    running = ColumnStatistics(6, 3, [0.5, 7.0], [2], tolerance=1e-6)
    for start in range(0, 40, 7):
        running.update(bank[start:start + 7])
    rows = [list(row) for row in bank]
    for temperature in (0.5, 7.0):
        expected = []
        for g in range(6):
            values = np.array([v for v in bank[:, g] if np.isfinite(v)])
            if not len(values):
                expected.append(0.0)
                continue
            top = values.max()
            expected.append(temperature * (top / temperature + math.log(np.exp((values - top) / temperature).mean())))
        assert running.log_mean_exp(temperature) == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert running.top_mean(3) == pytest.approx(naive_penalties(rows, "csls", k=3)[0] * np.array(2.0))
    assert running.top_mean(3)[5] == 0.0


def test_scale_is_the_standard_deviation_of_finite_bank_scores():
    scale = ScaleStatistics()
    scale.update(np.array([[.1, .9, -np.inf], [.2, .3, .8]]))
    scale.update(np.array([[.4]]))
    assert scale.sigma == pytest.approx(np.std([.1, .9, .2, .3, .8, .4]))
    constant = ScaleStatistics()
    constant.update(np.full((2, 2), 3.0))
    assert constant.sigma == 1.0  # all scores equal: no scale to take, and no division by zero


def test_item_penalty_keeps_minus_infinity_and_leaves_unknown_items_alone():
    penalty = ItemPenalty(np.array([.5, 0.0]))
    out = penalty.apply(np.array([[1.0, -np.inf]]), 1e-6)
    assert out.tolist() == [[.5, -np.inf]]


@pytest.mark.parametrize("memory_mb", [512.0, 1e-6])  # one block, and one query (bank query) per block
def test_blocks_change_nothing(memory_mb):
    entries = ["none", {"method": "csls", "k": 2}, {"method": "qb-norm", "beta": 3.0, "k": 1},
               {"method": "inverted-softmax", "beta": 1.5}, {"method": "csls", "k": 1, "i2t_bank": "images"},
               {"method": "qb-norm", "beta": 3.0, "k": 1, "bank": "transductive"}]
    reference, _ = scene(entries)
    stats, _ = scene(entries, memory_mb=memory_mb)
    key = ["direction", "normalization", "query"]
    assert stats.sort(key).equals(reference.sort(key))


def test_bank_queries_are_the_tables_texts_not_every_embedded_text():
    # the representation holds a third text (b3) that the bank table does not name: it is no bank query
    rep = TableRepresentation(["b1", "b3", "b2"], {**SCORES, **table(["b3"], GENS + REFS, [[5, 5, 5, 5, 5, 5, 5]])})
    bank = QueryBank.from_table(BANK_TABLE, rep)
    assert sorted(rep.texts[i] for i in bank.distinct) == ["b1", "b2"]
    protocol = Protocol(gallery(["A", "B", "C"]), REFERENCES, "test", TableRepresentation(REFS, SCORES),
                        TableRepresentation(GENS, SCORES), Settings(aggregations=("max",), progress=False))
    views = [protocol.view(label, rows) for label, rows in caption_set_views(CAPTIONS)]
    hubness = Hubness.prepare(protocol, views, check_normalizations({"normalization": [{"method": "csls", "k": 1}]}), bank)
    assert hubness.penalties[("t2i", "query-bank")][("p", "max")]["csls(k=1)"].penalty == pytest.approx([.15, .45, .2])
    assert hubness.penalties[("i2t", "captions")][(None, "max")]["csls(k=1)"].penalty == pytest.approx([.15, .15, .1, .35])


def test_one_direction_only_leaves_the_other_raw():
    stats, hubness = scene(["none", {"method": "csls", "k": 1, "directions": ["t2i"]}])
    label = "csls(k=1,t2i only)"
    assert counts(stats, "t2i", label) == {"0": (0, 0, 1), "1": (0, 1, 1), "2": (0, 0, 1), "3": (0, 1, 1)}
    assert counts(stats, "i2t", label) == counts(stats, "i2t", "none")
    assert ("i2t", "captions") not in hubness.penalties  # nothing computed for the raw direction


def test_transductive_statistics_come_from_the_evaluated_queries():
    stats, hubness = scene([{"method": "csls", "k": 1, "bank": "transductive"}])
    # t2i: the evaluated captions' best scores per image: A .55 (rx), B .7 (rb), C .6 (rx)
    penalty = hubness.penalties[("t2i", "transductive")][("p", "max")]["csls-transductive(k=1)"]
    assert penalty.penalty == pytest.approx([.275, .35, .3])
    assert stats["normalization"].unique().to_list() == ["csls-transductive(k=1)"]


# -- against the naive implementation ------------------------------------------------------------------

def random_scene(seed):
    rng = np.random.default_rng(seed)
    n_images, dim = 9, 6
    image_ids = [f"im{i}" for i in range(n_images)]
    ref_pool = rng.normal(size=(10, dim))
    gen_pool = rng.normal(size=(8, dim))
    bank_pool = rng.normal(size=(12, dim))
    hub = rng.normal(size=dim)  # a shared direction: some texts become hubs
    for pool in (ref_pool, gen_pool, bank_pool):
        pool += 0.8 * hub
        pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    # few distinct texts so that duplicates (exact ties) are frequent on every side
    ref_rows = [(image, int(rng.integers(10))) for image in image_ids for _ in range(3)]
    gen_rows = [(image, int(rng.integers(8)), slot) for image in image_ids[:-1] for slot in range(int(rng.integers(1, 4)))]
    bank_rows = [(f"bank{g}", int(rng.integers(12))) for g in range(6) for _ in range(2)]
    return image_ids, ref_pool, gen_pool, bank_pool, ref_rows, gen_rows, bank_rows


@pytest.mark.parametrize("aggregation", ["max", "mean", "rrf"])
@pytest.mark.parametrize("entry", [
    {"method": "csls", "k": 3},
    {"method": "inverted-softmax", "beta": 2.5},
    {"method": "qb-norm", "beta": 2.5, "k": 1},
    {"method": "qb-norm", "beta": 4.0, "k": 2, "i2t_bank": "images"},
])
def test_agrees_with_naive_implementation(aggregation, entry):
    image_ids, ref_pool, gen_pool, bank_pool, ref_rows, gen_rows, bank_rows = random_scene(11)
    images = gallery(image_ids)
    references = pl.DataFrame({"caption_id": range(len(ref_rows)), "image_id": [i for i, _ in ref_rows],
                               "text": [f"r{t}" for _, t in ref_rows]})
    captions = pl.DataFrame(
        {"image_id": [i for i, _, _ in gen_rows], "prompt": "p", "variant": [s for _, _, s in gen_rows], "field": None,
         "text": [f"g{t}" for _, t, _ in gen_rows]},
        schema_overrides={"variant": pl.Int64, "field": pl.String},
    )
    bank_texts = sorted({t for _, t in bank_rows})
    protocol = Protocol(images, references, "test", DenseRepresentation([f"r{i}" for i in range(10)], ref_pool),
                        DenseRepresentation([f"g{i}" for i in range(8)], gen_pool),
                        Settings(aggregations=(aggregation,), memory_mb=0.005, progress=False))
    views = [protocol.view("p", captions)]
    bank = QueryBank.from_table(pl.DataFrame({"group": [g for g, _ in bank_rows], "text": [f"b{t}" for _, t in bank_rows]}),
                                DenseRepresentation([f"b{t}" for t in bank_texts], bank_pool[bank_texts]))
    specs = check_normalizations({"normalization": [entry]})
    hubness = Hubness.prepare(protocol, views, specs, bank)
    values = recalls(pl.concat([protocol.text_to_image(views, hubness), protocol.image_to_text(views, hubness)]))

    ref_vecs = [ref_pool[t] for _, t in ref_rows]
    gen_vecs = [gen_pool[t] for _, t, _ in gen_rows]
    S = [[float(np.dot(r, g)) for g in gen_vecs] for r in ref_vecs]
    S_bank = [[float(np.dot(bank_pool[t], g)) for g in gen_vecs] for t in bank_texts]
    R_bank = [[float(np.dot(bank_pool[t], r)) for r in ref_vecs] for t in bank_texts]
    groups = None
    if entry.get("i2t_bank") == "images":
        groups = [[bank_texts.index(t) for g2, t in bank_rows if g2 == g] for g in dict.fromkeys(g for g, _ in bank_rows)]
    naive = naive_normalized_evaluate(
        S, S_bank, [i for i, _ in ref_rows], [i for i, _, _ in gen_rows], [s for _, _, s in gen_rows], image_ids,
        entry["method"], how=aggregation, k=entry.get("k"), beta=entry.get("beta"), R_bank=R_bank, bank_groups=groups,
    )
    for key, expected in naive.items():
        assert values[key] == pytest.approx(expected, abs=1e-9), key


# -- fusion of encoders ranks each encoder's normalised scores -----------------------------------------

def test_fusion_ranks_each_encoders_normalised_scores():
    specs = check_normalizations({"normalization": ["none", {"method": "csls", "k": 1}]})
    settings = Settings(aggregations=("max",), progress=False)
    flat = {key: 0.5 for key in SCORES}  # a second encoder that cannot tell anything apart
    protocols, views, hubness = [], [], []
    for scores in (SCORES, flat):
        protocol = Protocol(gallery(["A", "B", "C"]), REFERENCES, "test", TableRepresentation(REFS, scores),
                            TableRepresentation(GENS, scores), settings)
        protocols.append(protocol)
        views.append([protocol.view(label, rows) for label, rows in caption_set_views(CAPTIONS)])
        hubness.append(Hubness.prepare(protocol, views[-1], specs, QueryBank.from_table(BANK_TABLE, TableRepresentation(BANK, scores))))
    fused = FusedProtocol(protocols, FusionSpec("f", ("a", "b"), (1.0, 1.0), 0.0))
    stats = pl.concat([fused.text_to_image(views, hubness), fused.image_to_text(views, hubness)])
    single = pl.concat([protocols[0].text_to_image(views[0], hubness[0]), protocols[0].image_to_text(views[0], hubness[0])])
    # the flat encoder ranks every candidate first (1 / 1 for all), so the fusion is the first
    # encoder's ranking under each normalization: its rows equal the single encoder's
    for normalization in ("none", "csls(k=1)"):
        for direction in ("t2i", "i2t"):
            assert counts(stats, direction, normalization) == counts(single, direction, normalization)


# -- config --------------------------------------------------------------------------------------------

def test_labels_and_defaults():
    specs = check_normalizations({"normalization": ["none", "csls", "qb-norm", {"method": "inverted-softmax", "beta": 3},
                                                    {"method": "csls", "k": 5, "i2t_bank": "images"},
                                                    {"method": "qb-norm", "bank": "transductive", "k": 2}]})
    assert [s.label for s in specs] == ["none", "csls(k=10)", "qb-norm(beta=2,k=1)", "inverted-softmax(beta=3)",
                                        "csls(k=5,i2t=images)", "qb-norm-transductive(beta=2,k=2)"]
    assert [s.needs_query_bank for s in specs] == [False, True, True, True, True, False]
    assert check_normalizations({})[0].label == "none"


@pytest.mark.parametrize("entry, message", [
    ({"method": "zscore"}, "normalization[0].method"),
    ({"method": "csls", "beta": 2}, "takes no ['beta']"),
    ({"method": "csls", "k": 0}, "normalization[0].k"),
    ({"method": "qb-norm", "beta": -1}, "normalization[0].beta"),
    ({"method": "csls", "bank": "test"}, "normalization[0].bank"),
    ({"method": "csls", "bank": "transductive", "i2t_bank": "images"}, "i2t_bank applies to a query bank only"),
    ({"method": "csls", "bank": "transductive", "name": "csls-bank"}, "must say 'transductive'"),
    ({"method": "csls", "sigma": 1}, "unknown key"),
    ({"method": "csls", "directions": ["t2i", "x"]}, "normalization[0].directions"),
    ({"method": "csls", "directions": ["t2i"], "i2t_bank": "images"}, "i2t is not among its directions"),
])
def test_bad_entries_name_the_key(entry, message):
    with pytest.raises(TrsllavaError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        normalization_spec(entry, 0)


def test_duplicate_labels_are_refused():
    with pytest.raises(TrsllavaError, match=r"normalization\[1\] has the label 'csls\(k=10\)'"):
        check_normalizations({"normalization": ["csls", {"method": "csls", "k": 10}]})
