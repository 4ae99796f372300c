"""Caption-set composition: the joined database text built from imported fields, the joined texts
as a separately embedded part of the protocol, and weighted score fusion of caption sets."""

import logging

import numpy as np
import polars as pl
import pytest

from reference_protocol import expected_recall, naive_i2t_scores, naive_t2i_scores
from trsllava.encoders.dense import DenseRepresentation
from trsllava.encoders.lexical import BM25Encoder, BM25Representation
from trsllava.errors import TrsllavaError
from trsllava.evaluation.caption_set_spec import CaptionSetFusionSpec, caption_set_fusion_specs, joined_enabled
from trsllava.evaluation.caption_sets import join_fields
from trsllava.evaluation.evaluate import build_views
from trsllava.evaluation.metrics import recalls
from trsllava.evaluation.protocol import Protocol, Settings
from trsllava.evaluation.representations import StackedRepresentation, pair_scores


def caption_rows(rows):
    return pl.DataFrame(rows, schema={"image_id": pl.String, "captioner": pl.String, "prompt": pl.String, "variant": pl.Int64,
                                      "field": pl.String, "text": pl.String, "model_id": pl.String},
                        orient="row")


def test_join_fields_by_hand():
    captions = caption_rows([
        ("A", "c", "rsrt", 0, "caption", "A long paragraph.", "m"),
        ("A", "c", "rsrt", 0, "one_sentence", "An airport with planes", "m"),
        ("A", "c", "rsrt", 0, "feature", "runway: long, in the centre", "m"),
        ("A", "c", "rsrt", 1, "one_sentence", "A second look!", "m"),
        ("A", "c", "rsrt", 1, "caption", "Another paragraph", "m"),
        ("B", "c", "rsrt", 0, "feature", "roofs: dense", "m"),
        ("B", "c", "rsrt", 0, "one_sentence", "Houses", "m"),
        ("A", "c", "rsicd_style", None, None, "many planes are parked .", "m"),
        ("A", "c", "single", 0, "only", "one field prompts have nothing to join", "m"),
    ])
    joined = join_fields(captions, {"rsrt": ("one_sentence", "feature", "caption")})
    rows = {(r["image_id"], r["variant"]): r["text"] for r in joined.iter_rows(named=True)}
    # the prompt's field order, whatever the row order; a full stop ends a part that ends no
    # sentence ("!" and "." are kept); a variant missing a field joins the fields it has
    assert rows == {
        ("A", 0): "An airport with planes. runway: long, in the centre. A long paragraph.",
        ("A", 1): "A second look! Another paragraph.",
        ("B", 0): "Houses. roofs: dense.",
    }
    assert set(joined["field"]) == {"joined"} and set(joined["prompt"]) == {"rsrt"}
    assert joined.columns == captions.columns and set(joined["model_id"]) == {"m"}  # provenance kept
    # a prompt the registry does not know keeps the fields' order of first appearance
    assert join_fields(captions)["text"].to_list()[0] == "A long paragraph. An airport with planes. runway: long, in the centre."


def test_join_fields_of_a_table_without_fields_is_empty():
    captions = caption_rows([("A", "c", "rsicd_style", None, None, "a caption .", "m")])
    assert join_fields(captions).is_empty()


# -- the scene: two images, two caption sets, the joined texts embedded apart ---------------------------
# 2-d unit vectors at angles (degrees): queries q_a (A) at 0, q_b (B) at 90. Set "s1": A at 60, B at
# 10 (s1 confuses the two); set "s2": A at 20, B at 80. Joined texts (a part of their own): A at 5,
# B at 85. Cosines: cos 60 = .5, cos 10 = .985, cos 20 = .940, cos 80 = .174, cos 5 = .996, cos 85 = .087.

def unit(degrees):
    return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]


REFERENCES = pl.DataFrame({"caption_id": [0, 1], "image_id": ["A", "B"], "text": ["q_a", "q_b"]})
IMAGES = pl.DataFrame({"image_id": ["A", "B"], "filename": ["A", "B"], "split": "test", "path": None},
                      schema={"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String})
CAPTIONS = caption_rows([("A", "c", "s1", None, None, "a1", "m"), ("B", "c", "s1", None, None, "b1", "m"),
                         ("A", "c", "s2", None, None, "a2", "m"), ("B", "c", "s2", None, None, "b2", "m")])
JOINED = caption_rows([("A", "c", "s3", 0, "joined", "a1", "m"), ("B", "c", "s3", 0, "joined", "bj", "m")])


def scene_protocol(aggregation="max"):
    references = DenseRepresentation(["q_a", "q_b"], np.array([unit(0), unit(90)]))
    generated = DenseRepresentation(["a1", "b1", "a2", "b2"], np.array([unit(60), unit(10), unit(20), unit(80)]))
    # the joined part holds a text "a1" too, embedded differently: it must not be confused with s1's
    joined = DenseRepresentation(["a1", "bj"], np.array([unit(5), unit(85)]))
    return Protocol(IMAGES, REFERENCES, "test", references, StackedRepresentation([generated, joined]),
                    Settings(aggregations=(aggregation,), progress=False))


def scores_of(protocol, views):
    t2i = {view.label: s for view, _, s in protocol.t2i_scores(np.array([0, 1]), views)}
    i2t = {view.label: s for view, _, s in protocol.i2t_scores(np.array([0, 1]), views)}
    return t2i, i2t


def test_joined_texts_score_from_their_own_part():
    protocol = scene_protocol()
    views = build_views(protocol, CAPTIONS, JOINED)
    assert [v.label for v in views] == ["s1", "s2", "fused", "s3/joined"]
    t2i, i2t = scores_of(protocol, views)
    # s3/joined: A's "a1" is the joined part's vector at 5 degrees, not s1's at 60
    assert t2i["s3/joined"] == pytest.approx(np.array([[np.cos(np.radians(5)), np.cos(np.radians(85))],
                                                       [np.cos(np.radians(85)), np.cos(np.radians(5))]]))
    assert t2i["s1"][0] == pytest.approx([.5, np.cos(np.radians(10))])
    assert i2t["s3/joined"] == pytest.approx(t2i["s3/joined"].T)


def test_weighted_caption_set_fusion_by_hand():
    protocol = scene_protocol()
    fusion = CaptionSetFusionSpec("s1+s2", ("s1", "s2"), (0.25, 0.75))
    views = build_views(protocol, CAPTIONS, JOINED, [fusion])
    t2i, i2t = scores_of(protocol, views)
    cos = lambda d: np.cos(np.radians(d))  # noqa: E731
    # q_a: A = .25 cos 60 + .75 cos 20 = .830, B = .25 cos 10 + .75 cos 80 = .377
    expected = np.array([[.25 * cos(60) + .75 * cos(20), .25 * cos(10) + .75 * cos(80)],
                         [.25 * cos(30) + .75 * cos(70), .25 * cos(80) + .75 * cos(10)]])
    assert t2i["s1+s2"] == pytest.approx(expected)
    assert i2t["s1+s2"] == pytest.approx(expected.T)
    stats = pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)])
    part = stats.filter(pl.col("caption_set") == "s1+s2")
    assert recalls(part)["t2i_r1"] == 100.0
    # s1 alone ranks the other image first for both queries (q_a: B cos 10 > A cos 60; q_b: A cos 30
    # > B cos 80), s2 alone is right for both: the fusion keeps s2's answers
    assert recalls(stats.filter(pl.col("caption_set") == "s1"))["t2i_r1"] == 0.0


def test_fusion_of_missing_sets_is_skipped_and_a_clashing_name_refused(caplog):
    protocol = scene_protocol()
    with caplog.at_level(logging.WARNING):
        views = build_views(protocol, CAPTIONS, None, [CaptionSetFusionSpec("x", ("s1", "rsrt/feature"), (.5, .5))])
    assert "x" not in [v.label for v in views] and "rsrt/feature" in caplog.text
    with pytest.raises(TrsllavaError, match="caption_sets.fusions.fused"):
        build_views(protocol, CAPTIONS, None, [CaptionSetFusionSpec("fused", ("s1", "s2"), (.5, .5))])


@pytest.mark.parametrize("aggregation", ["max", "mean", "rrf"])
def test_fusion_agrees_with_naive_weighted_mean(aggregation):
    rng = np.random.default_rng(4)
    image_ids = [f"im{i}" for i in range(7)]
    ref_pool, gen_pool = rng.normal(size=(6, 5)), rng.normal(size=(9, 5))
    ref_rows = [(image, int(rng.integers(6))) for image in image_ids for _ in range(2)]
    rows = [(image, prompt, int(rng.integers(9)), slot) for image in image_ids for prompt in ("p", "q")
            for slot in range(int(rng.integers(1, 3)))]
    rows = [r for r in rows if not (r[0] == "im6" and r[1] == "q")]  # im6 has no text in q: -inf in the fusion
    images = IMAGES.clear().vstack(pl.DataFrame({"image_id": image_ids, "filename": image_ids, "split": "test", "path": None},
                                                schema=IMAGES.schema))
    references = pl.DataFrame({"caption_id": range(len(ref_rows)), "image_id": [i for i, _ in ref_rows], "text": [f"r{t}" for _, t in ref_rows]})
    captions = pl.DataFrame({"image_id": [r[0] for r in rows], "prompt": [r[1] for r in rows], "variant": [r[3] for r in rows],
                             "field": None, "text": [f"g{r[2]}" for r in rows]}, schema_overrides={"variant": pl.Int64, "field": pl.String})
    protocol = Protocol(images, references, "test", DenseRepresentation([f"r{i}" for i in range(6)], ref_pool),
                        DenseRepresentation([f"g{i}" for i in range(9)], gen_pool),
                        Settings(aggregations=(aggregation,), memory_mb=0.002, progress=False))
    views = build_views(protocol, captions, None, [CaptionSetFusionSpec("f", ("p", "q"), (0.3, 0.7))])
    stats = pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)])
    values = recalls(stats.filter(pl.col("caption_set") == "f"))

    S = [[float(ref_pool[t] @ gen_pool[g]) for (_, g, _) in [(r[0], r[2], r[3]) for r in rows]] for _, t in ref_rows]
    members = {p: [i for i, r in enumerate(rows) if r[1] == p] for p in ("p", "q")}

    def sub(prompt):
        idx = members[prompt]
        return [[line[i] for i in idx] for line in S], [rows[i][0] for i in idx], [rows[i][3] for i in idx]

    def t2i(q):
        parts = [naive_t2i_scores(Sp, q, owners, slots, image_ids, aggregation) for Sp, owners, slots in map(sub, "pq")]
        return [.3 * a + .7 * b for a, b in zip(*parts)]

    def i2t(image):
        parts = [naive_i2t_scores(Sp, image, owners, aggregation) for Sp, owners, _ in map(sub, "pq")]
        return [.3 * a + .7 * b for a, b in zip(*parts)]

    for k in (1, 5, 10):
        t = np.mean([expected_recall(t2i(q), [im == qi for im in image_ids], k)[0] for q, (qi, _) in enumerate(ref_rows)])
        i = np.mean([expected_recall(i2t(im), [owner == im for owner, _ in ref_rows], k)[0] for im in image_ids])
        assert values[f"t2i_r{k}"] == pytest.approx(100 * t, abs=1e-9)
        assert values[f"i2t_r{k}"] == pytest.approx(100 * i, abs=1e-9)


def test_stacked_bm25_parts_keep_their_own_index(tmp_path):
    encoder = BM25Encoder("bm25", {"type": "bm25"})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "q").mkdir()
    encoder.represent(["a plane on a runway", "houses and trees"], tmp_path / "a")
    encoder.represent(["a plane", "a plane near a plane hangar", "trees"], tmp_path / "b")
    encoder.represent(["plane runway", "trees"], tmp_path / "q")
    a, b, q = (BM25Representation.load(tmp_path / n, "en") for n in "abq")
    stacked = StackedRepresentation([a, b])
    rows = np.array([0, 1])
    assert np.array_equal(pair_scores(q, stacked, rows), np.hstack([q.scores_against(a, rows), q.scores_against(b, rows)]))
    as_queries = stacked.scores_against(q, np.array([4, 0, 2]))  # rows of part b, a, b
    assert np.array_equal(as_queries, np.vstack([b.scores_against(q, np.array([2])), a.scores_against(q, np.array([0])),
                                                 b.scores_against(q, np.array([0]))]))


def test_config_checks():
    assert not joined_enabled({}) and joined_enabled({"caption_sets": {"joined": True}})  # opt-in
    specs = caption_set_fusion_specs({"caption_sets": {"fusions": {"f": {"sets": ["a", "b/c"], "weights": [1, 3]}}}})
    assert specs == [CaptionSetFusionSpec("f", ("a", "b/c"), (0.25, 0.75))]
    for entry, message in [({"sets": ["a"]}, "two or more"), ({"sets": ["a", "b"], "weights": [1]}, "one number per set"),
                           ({"sets": ["a", "b"], "weights": [1, 0]}, "must all be > 0")]:
        with pytest.raises(TrsllavaError, match=f"caption_sets.fusions.f.*{message}"):
            caption_set_fusion_specs({"caption_sets": {"fusions": {"f": entry}}})
