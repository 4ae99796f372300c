"""The baselines: zero-shot CLIP (a tiny random CLIP built at test time) and the leave-one-out
human-caption oracle, on hand-worked cases and through Snakemake on the built-in sample."""

import numpy as np
import polars as pl
import pytest

from test_workflow import ROOT, snakemake, write_config
from trsllava.baselines.clip import embed_dataset, embed_images, embed_texts, load_clip
from trsllava.baselines.tiny_clip import build_tiny_clip
from trsllava.datasets import DatasetSpec, load_dataset
from trsllava.encoders.dense import DenseRepresentation
from trsllava.evaluation.baselines import Oracle, clip_stats, summarize
from trsllava.evaluation.caption_sets import caption_set_views
from trsllava.evaluation.metrics import recalls
from trsllava.evaluation.protocol import Protocol, Settings
from trsllava.reporting.tables import headline_rows

SCHEMA = {"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String}


def images_table(ids):
    return pl.DataFrame({"image_id": ids, "filename": ids, "split": "test", "path": None}, schema=SCHEMA)


def representation(table):
    return DenseRepresentation(list(table), np.array(list(table.values()), dtype=np.float32))


def tie_rows(stats, direction, aggregation="max"):
    part = stats.filter((pl.col("direction") == direction) & (pl.col("aggregation") == aggregation)).sort("query")
    return dict(zip(part["query"], zip(part["above"], part["tied_other"], part["tied_relevant"])))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("model") / "tiny-clip")


# -- CLIP -----------------------------------------------------------------------------------------

def test_tiny_clip_embeddings_are_normalised_and_deterministic(tiny_clip, tmp_path):
    images, references = load_dataset(DatasetSpec.from_config("sample", {"format": "builtin"}))
    model, processor, device = load_clip({"model": str(tiny_clip), "device": "cpu"})
    paths = images["path"].to_list()[:5]
    vectors, _ = embed_images(model, processor, device, paths, batch_size=2)
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])  # different images, different vectors
    np.testing.assert_allclose(embed_images(model, processor, device, paths, batch_size=5)[0], vectors, atol=1e-5)
    texts = references["text"].to_list()[:4] + ["x" * 500]  # longer than the 77-token context: truncated
    text_vectors = embed_texts(model, processor, device, texts, batch_size=3)
    assert text_vectors.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1.0, atol=1e-5)
    # the same seed writes the same weights: a rebuilt model gives the same embeddings
    again = load_clip({"model": str(build_tiny_clip(tmp_path / "again")), "device": "cpu"})
    np.testing.assert_allclose(embed_images(*again, paths)[0], vectors, atol=1e-6)

    embed_dataset("tiny", {"model": str(tiny_clip), "device": "cpu"}, images.head(3), references, tmp_path / "emb")
    image_rep = DenseRepresentation.load(tmp_path / "emb" / "images")
    assert image_rep.texts == [f"<image>{i}" for i in images["image_id"].head(3)]
    assert len(DenseRepresentation.load(tmp_path / "emb" / "references")) == references["text"].n_unique()


def test_clip_without_a_model_folder_or_hub_fails_with_one_line(tmp_path):
    from trsllava.errors import TrsllavaError

    with pytest.raises(TrsllavaError, match="local folder in Hugging Face format|not a folder"):
        load_clip({"model": str(tmp_path / "missing")}, "nothing")


def test_clip_scoring_through_the_evaluator_by_hand():
    """Images A, B, C; four human captions. B's caption rx scores A and B exactly alike (a tie):
    expected R@1 1/2, optimistic 1, pessimistic 0. C's caption rc prefers B (a miss at R@1)."""
    h = float(np.sqrt(0.5))
    image_rep = representation({"<image>A": [1.0, 0.0], "<image>B": [0.0, 1.0], "<image>C": [-1.0, 0.0]})
    text_rep = representation({"ra": [1.0, 0.0], "rb": [0.0, 1.0], "rx": [h, h], "rc": [-0.6, 0.8]})
    references = pl.DataFrame({"caption_id": [0, 1, 2, 3], "image_id": ["A", "B", "B", "C"], "text": ["ra", "rb", "rx", "rc"]})
    stats, protocol = clip_stats(images_table(["A", "B", "C"]), references, "test", image_rep, text_rep,
                                 Settings(progress=False))
    assert tie_rows(stats, "t2i") == {"0": (0, 0, 1), "1": (0, 0, 1), "2": (0, 1, 1), "3": (1, 0, 1)}
    assert tie_rows(stats, "i2t") == {"A": (0, 0, 1), "B": (0, 0, 1), "C": (0, 0, 1)}
    assert set(stats["aggregation"]) == {"max"} and set(stats["caption_set"]) == {"image"}
    _, metrics = summarize(stats, dataset="d", captioner="clip:stub", encoder="clip", n_images=3, kind="baseline")
    row = metrics.row(0, named=True)
    assert (row["t2i_r1"], row["t2i_r1_optimistic"], row["t2i_r1_pessimistic"]) == (62.5, 75.0, 50.0)
    assert (row["t2i_r5"], row["i2t_r1"], row["i2t_r5"]) == (100.0, 100.0, 100.0)
    assert row["mR"] == pytest.approx((3 * 100 + 62.5 + 100 + 100) / 6)
    assert (row["n_t2i_queries"], row["n_i2t_queries"], row["kind"]) == (4, 3, "baseline")


# -- oracle ---------------------------------------------------------------------------------------
# A: t1, t2; B: t3, t4; C: t1 (the same text as A's first caption, a single caption).
# Cosines: t1.t2 0.8, t1.t3 0.6, t1.t4 0, t2.t3 0.96, t2.t4 0.6, t3.t4 0.8.
ORACLE_TEXTS = {"t1": [1.0, 0.0], "t2": [0.8, 0.6], "t3": [0.6, 0.8], "t4": [0.0, 1.0]}
ORACLE_REFS = pl.DataFrame({"caption_id": [0, 1, 2, 3, 4], "image_id": ["A", "A", "B", "B", "C"],
                            "text": ["t1", "t2", "t3", "t4", "t1"]})


def oracle(aggregations=("max",)):
    return Oracle(images_table(["A", "B", "C"]), ORACLE_REFS, "test", representation(ORACLE_TEXTS),
                  Settings(aggregations=aggregations, progress=False))


def test_oracle_leave_one_out_by_hand():
    o = oracle()
    # t2i, max over the image's captions but the query:
    #   0 (A,t1): A{t2} .8, B .6, C{t1} 1   -> 1 above
    #   1 (A,t2): A{t1} .8, B .96, C .8     -> 1 above, C tied
    #   2 (B,t3): A .96, B{t4} .8, C .6     -> 1 above
    #   3 (B,t4): A .6, B{t3} .8, C 0       -> first
    #   4 (C,t1): C{} nothing, A 1, B .6    -> 2 above
    assert tie_rows(o.text_to_image(), "t2i") == {"0": (1, 0, 1), "1": (1, 1, 1), "2": (1, 0, 1), "3": (0, 0, 1), "4": (2, 0, 0 + 1)}
    # i2t: A scores its own t1 by {t2} .8 and its t2 by {t1} .8; B's t3 .96, C's t1 1 -> 2 above, both own tied
    #      B scores its own t3 by {t4} .8, t4 by {t3} .8; A's t2 .96 above
    #      C has one caption: left out, it scores -inf, below the 4 others
    assert tie_rows(o.image_to_text(), "i2t") == {"A": (2, 0, 2), "B": (1, 0, 2), "C": (4, 0, 1)}
    stats = pl.concat([o.text_to_image(), o.image_to_text()])
    values = recalls(stats)
    assert (values["t2i_r1"], values["t2i_r5"], values["i2t_r1"], values["i2t_r5"]) == (20.0, 100.0, 0.0, 100.0)
    assert values["mR"] == pytest.approx(70.0)


def test_oracle_text_to_image_equals_the_protocol_on_each_left_out_table():
    """max and mean: query q against the caption table of the references minus q."""
    o = oracle(("max", "mean", "rrf"))
    stats = o.text_to_image()
    assert set(stats["aggregation"]) == {"max", "mean"}  # rrf is not defined for the oracle
    captions = ORACLE_REFS.with_columns(pl.lit("references-loo").alias("prompt"), pl.lit(None, pl.Int64).alias("variant"),
                                        pl.lit(None, pl.String).alias("field"))
    for aggregation in ("max", "mean"):
        got = tie_rows(stats, "t2i", aggregation)
        for row in range(ORACLE_REFS.height):
            rest = captions.filter(pl.col("caption_id") != row)
            protocol = Protocol(images_table(["A", "B", "C"]), ORACLE_REFS, "test", representation(ORACLE_TEXTS),
                                representation(ORACLE_TEXTS), Settings(aggregations=(aggregation,), progress=False))
            views = [protocol.view(label, rows) for label, rows in caption_set_views(rest)]
            want = tie_rows(protocol.text_to_image(views), "t2i", aggregation)[str(row)]
            assert got[str(row)] == want, (aggregation, row)


def test_oracle_image_to_text_mean_by_hand():
    stats = oracle(("mean",)).image_to_text()
    # A: own t1 by {t2} .8, own t2 by {t1} .8; B's t3 (.6 + .96) / 2 = .78, B's t4 .3, C's t1 (1 + .8) / 2 = .9
    # B: own t3 by {t4} .8, own t4 by {t3} .8; A's t1 .3, A's t2 .78, C's t1 .3 -> first, both own tied
    assert tie_rows(stats, "i2t", "mean") == {"A": (1, 0, 2), "B": (0, 0, 2), "C": (4, 0, 1)}


def test_oracle_leaves_out_the_caption_or_every_identical_caption():
    """A: t1, t1 (a repeated caption, as in RSICD), t2; B: t3. Query A's first t1:
    leaving out the row, A keeps the other t1 (1.0, first); leaving out the text, A has only t2
    (.8) and B's t3 (.6) stays below; B's t3 query: A .96 either way."""
    refs = pl.DataFrame({"caption_id": [0, 1, 2, 3], "image_id": ["A", "A", "A", "B"], "text": ["t1", "t1", "t2", "t3"]})
    texts = {"t1": [1.0, 0.0], "t2": [0.0, 1.0], "t3": [0.6, 0.8]}
    by_caption = Oracle(images_table(["A", "B"]), refs, "test", representation(texts), Settings(progress=False), "caption")
    by_text = Oracle(images_table(["A", "B"]), refs, "test", representation(texts), Settings(progress=False), "text")
    assert set(by_caption.text_to_image()["caption_set"]) == {"references-loo"}
    assert set(by_text.text_to_image()["caption_set"]) == {"references-loo-distinct"}
    mean_caption = tie_rows(by_caption.text_to_image(), "t2i", "mean")
    mean_text = tie_rows(by_text.text_to_image(), "t2i", "mean")
    # mean, query 0 (A's t1): by caption A = (1 + 0) / 2 = .5 < B .6 -> 1 above; by text A = t2 alone 0 -> 1 above
    assert (mean_caption["0"], mean_text["0"]) == ((1, 0, 1), (1, 0, 1))
    # max: by caption A 1.0 first; by text A 0 < B .6
    assert tie_rows(by_caption.text_to_image(), "t2i")["0"] == (0, 0, 1)
    assert tie_rows(by_text.text_to_image(), "t2i")["0"] == (1, 0, 1)
    # i2t max, image A: own t1 rows scored by the other t1 (1.0) by caption, by t2 only (0) by text;
    # own t2 by max(t1, t1) = 0; B's t3 by max(.6, .6, .8) = .8
    assert tie_rows(by_caption.image_to_text(), "i2t")["A"] == (0, 0, 2)
    assert tie_rows(by_text.image_to_text(), "i2t")["A"] == (1, 0, 3)


# -- through Snakemake ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline_run(tiny_clip, tmp_path_factory):
    workdir = write_config(
        tmp_path_factory.mktemp("baselines"),
        captioners={"claude-sample": {"backend": "import", "files": {"sample": "builtin"}}},
        baselines={"clip": {"models": {"tiny": {"model": str(tiny_clip), "batch_size": 16, "device": "cpu"}}}, "oracle": True},
    )
    snakemake(workdir, "--cores", "2")
    return workdir


def test_ablation_has_the_clip_and_oracle_rows(baseline_run):
    ablation = pl.read_parquet(baseline_run / "results" / "ablation.parquet")
    clip = ablation.filter(pl.col("captioner") == "clip:tiny")
    assert clip.select("dataset", "prompt", "encoder", "aggregation", "kind").rows() == [("sample", "image", "clip", "max", "baseline")]
    row = clip.row(0, named=True)
    assert (row["n_i2t_queries"], row["n_t2i_queries"], row["n_gallery_images"]) == (60, 300, 60)
    for column in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"):
        assert 0.0 <= row[column] <= 100.0
    oracle_rows = ablation.filter(pl.col("captioner") == "oracle")
    assert sorted(oracle_rows.select("prompt", "encoder", "aggregation").rows()) == sorted(
        (p, e, a) for p in ("references-loo", "references-loo-distinct") for e in ("bm25", "minilm") for a in ("max", "mean"))
    assert set(oracle_rows["kind"]) == {"diagnostic"}
    assert set(oracle_rows["n_t2i_queries"]) == {300} and set(oracle_rows["n_i2t_queries"]) == {60}
    assert ((oracle_rows["mR"] > 0) & (oracle_rows["mR"] <= 100)).all()
    captions = ablation.filter(pl.col("captioner") == "claude-sample")
    # 6 caption sets x (minilm, bm25, their minilm+bm25 fusion) x 3 aggregations
    assert captions.height == 6 * 3 * 3 and set(captions["kind"]) == {"captions"}
    # diagnostics never enter the figures or the best-row picks
    assert "oracle" not in headline_rows(ablation)["captioner"].to_list()
    bold = [line for line in (baseline_run / "results" / "ablation.tex").read_text().splitlines() if r"\textbf" in line]
    assert bold and not any(line.startswith("sample & oracle") for line in bold)
    assert (baseline_run / "results" / "figures" / "mr_heatmap_sample.png").stat().st_size > 0


def test_clip_rows_match_a_direct_computation(baseline_run, tiny_clip):
    """The CLIP row equals the naive per-query protocol on embeddings computed directly."""
    from reference_protocol import naive_evaluate

    results = baseline_run / "results" / "sample"
    images = pl.read_parquet(results / "dataset" / "images.parquet")
    references = pl.read_parquet(results / "dataset" / "references.parquet")
    model, processor, device = load_clip({"model": str(tiny_clip), "device": "cpu"})
    image_vecs, failures = embed_images(model, processor, device, images["path"].to_list())
    assert failures == []
    ref_vecs = embed_texts(model, processor, device, references["text"].to_list())
    naive = naive_evaluate(ref_vecs, references["image_id"].to_list(), image_vecs, images["image_id"].to_list(),
                           images["image_id"].to_list())
    row = pl.read_parquet(baseline_run / "results" / "ablation.parquet").filter(pl.col("captioner") == "clip:tiny").row(0, named=True)
    for key, value in naive.items():
        assert row[key] == pytest.approx(value, abs=0.01), key


def test_clip_lists_an_unreadable_image_instead_of_failing(tiny_clip, tmp_path):
    from trsllava.baselines.clip import embed_images

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    good = [str(p) for p in sorted((ROOT / "src" / "trsllava" / "data" / "sample" / "images").glob("*.jpg"))[:2]]
    model, processor, device = load_clip({"model": str(tiny_clip), "device": "cpu"})
    vectors, failures = embed_images(model, processor, device, [good[0], str(broken), good[1]], batch_size=2)
    assert vectors.shape[0] == 2
    assert [(f["index"], f["path"]) for f in failures] == [(1, str(broken))] and "broken.jpg" in failures[0]["reason"]
    alone, _ = embed_images(model, processor, device, good)
    assert np.allclose(vectors, alone, atol=1e-6)  # the readable images' vectors do not depend on the bad one
