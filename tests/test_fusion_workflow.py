"""Fused retrieval through Snakemake on the built-in sample: the fusion rows of the ablation, from
the encoders' cached representations, matching a naive fusion of the same scores."""

import numpy as np
import polars as pl
import pytest

from reference_protocol import naive_fusion_evaluate
from test_workflow import snakemake, write_config
from trsllava.encoders import load_representation

ENCODERS = {"minilm": {"type": "sentence-transformers", "model": "minilm"}, "bm25": {"type": "bm25"}}


@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory):
    workdir = write_config(tmp_path_factory.mktemp("fusion"), encoders=ENCODERS, aggregations=["max"],
                           fusions={"minilm+bm25": {"encoders": ["minilm", "bm25"]}})
    plan = snakemake(workdir, "-n", "--quiet", "rules").stdout
    jobs = {line.split()[0]: int(line.split()[1]) for line in plan.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}
    snakemake(workdir, "--cores", "2")
    return workdir, jobs


def test_fusion_reuses_each_encoders_cache(fusion_run):
    _, jobs = fusion_run
    # each encoder embeds once; the fusion is one more evaluation, no encoding of its own
    assert jobs["embed_references"] == jobs["embed_captions"] == jobs["evaluate"] == 2 and jobs["evaluate_fusion"] == 1


def test_fusion_rows_in_the_ablation(fusion_run):
    workdir, _ = fusion_run
    ablation = pl.read_csv(workdir / "results" / "ablation.csv")
    fused = ablation.filter(pl.col("encoder") == "minilm+bm25")
    assert sorted(fused["prompt"]) == sorted(ablation.filter(pl.col("encoder") == "minilm")["prompt"])
    assert set(fused["aggregation"]) == {"max"} and set(fused["captioner"]) == {"claude-sample"}
    assert set(fused["n_i2t_queries"]) == {60} and set(fused["n_t2i_queries"]) == {300}
    assert (fused["mR_pessimistic"] <= fused["mR"] + 1e-9).all() and (fused["mR"] <= fused["mR_optimistic"] + 1e-9).all()
    # sane: far above chance (60 images: R@10 by chance about 17%) and not above 100
    assert (fused["mR"] > 40).all() and (fused["mR_optimistic"] <= 100).all()
    ranks = pl.read_parquet(workdir / "results" / "sample" / "eval" / "minilm+bm25" / "claude-sample.ranks.parquet")
    assert ranks.height == (300 + 60) * fused.height and set(ranks["encoder"]) == {"minilm+bm25"}


def test_fusion_row_matches_a_naive_fusion_of_the_cached_scores(fusion_run):
    workdir, _ = fusion_run
    results = workdir / "results" / "sample"
    references = pl.read_parquet(results / "dataset" / "references.parquet")
    captions = pl.read_parquet(results / "captions" / "claude-sample.parquet")
    captions = captions.filter((pl.col("prompt") == "rsrt") & (pl.col("field") == "one_sentence"))
    S_list, S_i2t_list = [], []  # BM25 is asymmetric: image-to-text queries with the generated texts
    for name, entry in ENCODERS.items():
        refs = load_representation(name, entry, results / "embeddings" / name / "references")
        gens = load_representation(name, entry, results / "embeddings" / name / "captions" / "claude-sample")
        ref_rows = np.array([refs.texts.index(t) for t in references["text"]])
        gen_rows = [gens.texts.index(t) for t in captions["text"]]
        S_list.append(refs.scores_against(gens, ref_rows)[:, gen_rows].astype(np.float64).tolist())
        S_i2t_list.append(gens.scores_against(refs, np.array(gen_rows))[:, ref_rows].T.astype(np.float64).tolist())
    image_ids = pl.read_parquet(results / "dataset" / "images.parquet")["image_id"].to_list()
    naive = naive_fusion_evaluate(S_list, (1.0, 1.0), 60.0, references["image_id"].to_list(), captions["image_id"].to_list(),
                                  list(range(captions.height)), image_ids, S_i2t_list=S_i2t_list)
    row = pl.read_csv(workdir / "results" / "ablation.csv").filter(
        (pl.col("prompt") == "rsrt/one_sentence") & (pl.col("encoder") == "minilm+bm25")
    ).row(0, named=True)
    for key, value in naive.items():
        assert row[key] == pytest.approx(value, abs=0.01), key


def test_fusion_naming_an_unknown_encoder_stops_at_start(tmp_path):
    workdir = write_config(tmp_path, fusions={"minilm+clip": {"encoders": ["minilm", "clip"]}})
    result = snakemake(workdir, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config: fusions.minilm+clip.encoders names unknown encoder(s) ['clip']" in output
