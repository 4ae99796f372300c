"""The whole workflow through Snakemake on the built-in sample, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from reference_protocol import naive_evaluate

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def snakemake(workdir, *args, check=True):
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def offline_config() -> dict:
    """config.yaml less the captioners that need a model (their runs are tested with tiny models)."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["captioners"] = {name: entry for name, entry in config["captioners"].items() if entry["backend"] == "import"}
    return config


def write_config(workdir: Path, **changes) -> Path:
    """The offline configuration (config.yaml less the captioners that download a model) with changes."""
    config = offline_config()
    config["results"] = str(workdir / "results")
    config["baselines"] = {"clip": {"models": {}}, "oracle": False}  # no CLIP download; tests opt in
    if "encoders" in changes and "fusions" not in changes:
        # the default fusions name the default encoders; a test choosing its own encoders opts in to fusions
        config["fusions"] = {}
    config.update(changes)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = write_config(tmp_path_factory.mktemp("run"))
    snakemake(workdir, "--cores", "2")
    return workdir


def test_ablation_has_exactly_the_expected_rows(finished_run):
    ablation = pl.read_csv(finished_run / "results" / "ablation.csv")
    prompts = ["fused", "rsicd_style", "rsrt", "rsrt/caption", "rsrt/feature", "rsrt/one_sentence"]
    encoders = ("bm25", "minilm", "minilm+bm25")  # minilm+bm25: the default fusion (evaluate_fusion)
    expected = sorted(("sample", "claude-sample", p, e, a) for p in prompts for e in encoders for a in ("max", "mean", "rrf"))
    assert sorted(ablation.select("dataset", "captioner", "prompt", "encoder", "aggregation").rows()) == expected
    assert ablation.columns[:15] == ["dataset", "captioner", "prompt", "encoder", "aggregation", "normalization", "i2t_r1",
                                     "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR", "mR_optimistic", "mR_pessimistic"]
    assert set(ablation["normalization"]) == {"none"}  # the default: raw scores
    assert set(ablation["n_t2i_queries"]) == {300} and set(ablation["n_i2t_queries"]) == {60}
    assert (ablation["mR_pessimistic"] <= ablation["mR"] + 1e-9).all() and (ablation["mR"] <= ablation["mR_optimistic"] + 1e-9).all()
    for ext in ("parquet", "md", "tex"):
        assert (finished_run / "results" / f"ablation.{ext}").stat().st_size > 0


@pytest.mark.parametrize("prompt", ["rsicd_style", "rsrt/one_sentence"])
def test_minilm_rows_match_an_independent_computation(finished_run, prompt):
    """Encode with sentence-transformers directly and score with the naive per-query protocol."""
    from sentence_transformers import SentenceTransformer

    from trsllava.encoders.weights import resolve_model

    results = finished_run / "results" / "sample"
    references = pl.read_parquet(results / "dataset" / "references.parquet")
    captions = pl.read_parquet(results / "captions" / "claude-sample.parquet")
    captions = captions.filter(pl.col("prompt") == prompt.split("/")[0])
    if "/" in prompt:
        captions = captions.filter(pl.col("field") == prompt.split("/")[1])
    model = SentenceTransformer(resolve_model("minilm"), device="cpu")
    ref_vecs = model.encode(references["text"].to_list(), normalize_embeddings=True)
    gen_vecs = model.encode(captions["text"].to_list(), normalize_embeddings=True)
    image_ids = pl.read_parquet(results / "dataset" / "images.parquet")["image_id"].to_list()
    naive = naive_evaluate(ref_vecs, references["image_id"].to_list(), gen_vecs, captions["image_id"].to_list(), image_ids)
    row = pl.read_csv(finished_run / "results" / "ablation.csv").filter(
        (pl.col("prompt") == prompt) & (pl.col("encoder") == "minilm") & (pl.col("aggregation") == "max")
    ).row(0, named=True)
    for key, value in naive.items():
        assert row[key] == pytest.approx(value, abs=0.01), key


def test_outputs_per_query_ranks_coverage_and_index(finished_run):
    results = finished_run / "results" / "sample"
    ranks = pl.read_parquet(results / "eval" / "minilm" / "claude-sample.ranks.parquet")
    assert ranks.height == (300 + 60) * 6 * 3
    assert (ranks["rank_optimistic"] <= ranks["rank_expected"]).all() and (ranks["rank_expected"] <= ranks["rank_pessimistic"]).all()
    coverage = yaml.safe_load((results / "captions" / "claude-sample.coverage.json").read_text())
    assert coverage["captioned_images"] == 60 and coverage["images_without_caption"] == []
    assert (results / "index" / "minilm" / "claude-sample" / "index.faiss").stat().st_size > 0


def test_figures_target_redraws_without_recomputing(finished_run):
    assert "Nothing to be done" in snakemake(finished_run, "-n", "figures").stdout
    for figure in (finished_run / "results" / "figures").iterdir():
        figure.unlink()
    plan = snakemake(finished_run, "-n", "figures", "--quiet", "rules").stdout
    assert "draw_figures" in plan and "evaluate" not in plan and "embed" not in plan
    snakemake(finished_run, "--cores", "1", "figures")
    names = sorted(p.name for p in (finished_run / "results" / "figures").iterdir())
    assert names == sorted(f"{n}.{e}" for n in ("mr_heatmap_sample", "recall_bars_sample", "headline") for e in ("pdf", "png"))


def test_report_and_lint(finished_run):
    snakemake(finished_run, "--report", str(finished_run / "report.html"))
    html = (finished_run / "report.html").read_text(errors="replace")
    for figure in ("mr_heatmap_sample.png", "recall_bars_sample.png", "headline.png", "ablation.csv"):
        assert figure in html, figure
    assert "manifest.json" in html and "claude-sample.coverage.json" in html and "report.json" in html  # dataset report
    lint = snakemake(finished_run, "--lint")
    assert "Congratulations" in lint.stdout + lint.stderr and "Lints for" not in lint.stdout + lint.stderr


def test_invalid_config_value_is_named(tmp_path):
    workdir = write_config(tmp_path, aggregations=["median"])
    result = snakemake(workdir, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "'median' is not one of" in output and "instance['aggregations'][0]" in output


def test_unknown_encoder_alias_fails_with_one_clear_line(tmp_path):
    workdir = write_config(tmp_path, encoders={"typo": {"type": "sentence-transformers", "model": "minilmx"}}, fusions={})
    result = snakemake(workdir, "--cores", "1", "--keep-going", check=False)
    assert result.returncode != 0
    assert "unknown encoder alias 'minilmx'" in result.stdout + result.stderr
    # work that does not depend on the failed job is finished and kept
    assert (workdir / "results" / "sample" / "captions" / "claude-sample.parquet").is_file()


def test_cli_redraws_figures_from_existing_results(finished_run):
    from trsllava.cli import main

    (finished_run / "results" / "figures" / "headline.png").unlink()
    assert main(["figures", "--results", str(finished_run / "results"), "--config", str(finished_run / "config.yaml")]) == 0
    assert (finished_run / "results" / "figures" / "headline.png").stat().st_size > 0
    assert main(["figures", "--results", str(finished_run / "nothing-here")]) == 1


def test_changing_figure_options_reruns_only_the_figure_rule(finished_run):
    """A paper-figure iteration: new rows, order, labels, width and format in config; only
    draw_figures reruns, and the ablation table and every evaluation are left untouched."""
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["figures"].update(formats=["svg"], width=3.5, order="config", labels={"minilm": "MiniLM-L6"},
                             select={"prompts": ["rsrt/one_sentence", "rsicd_style"], "aggregations": ["max"]})
    edited = finished_run / "figures-edit.yaml"
    edited.write_text(yaml.safe_dump(config))
    untouched = {p: p.stat().st_mtime_ns for p in (finished_run / "results").rglob("*.parquet")}
    plan = snakemake(finished_run, "-n", "--configfile", str(edited), "--quiet", "rules").stdout
    jobs = {line.split()[0] for line in plan.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert jobs - {"total"} == {"draw_figures", "all"}, plan
    snakemake(finished_run, "--cores", "1", "--configfile", str(edited))
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    svg = (finished_run / "results" / "figures" / "recall_bars_sample.svg").read_text()
    assert "MiniLM-L6" in svg and 'width="252pt"' in svg  # 3.5 in x 72 pt
    # the selection: the two chosen caption sets with max only, in config order
    assert "rsrt/one_sentence" in svg and "fused" not in svg and "rrf" not in svg
    manifest = json.loads((finished_run / "results" / "manifest.json").read_text())
    assert f"config {manifest['config_sha256'][:10]}" in svg  # the manifest's line in the footer


def test_run_manifest_traces_the_results(finished_run):
    from trsllava.datasets.load import BUILTIN_ANNOTATIONS
    from trsllava.hashing import sha256_of
    from trsllava.manifest import config_sha256

    manifest = json.loads((finished_run / "results" / "manifest.json").read_text())
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    effective = manifest["config"]  # config.yaml with the schema's defaults filled in, less `figures`
    assert "figures" not in effective and effective["captioners"] == config["captioners"]
    assert manifest["config_sha256"] == config_sha256(effective) != config_sha256({**effective, "aggregations": ["max"]})
    assert config_sha256({**effective, "figures": {"formats": ["svg"]}}) == manifest["config_sha256"]  # presentation only
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    assert manifest["git"]["commit"] == (head.stdout.strip() or None)
    assert manifest["datasets"]["sample"]["annotations_sha256"] == sha256_of(BUILTIN_ANNOTATIONS)
    assert manifest["datasets"]["sample"]["images"] == 60 and len(manifest["datasets"]["sample"]["image_listing_sha256"]) == 64
    assert manifest["captioners"] == [{"dataset": "sample", "captioner": "claude-sample", "backend": "import",
                                       "model": config["captioners"]["claude-sample"]["model"], "revision": None}]
    assert manifest["encoders"]["minilm"]["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["hardware"]["cpus"] >= 1 and {"polars", "snakemake"} <= set(manifest["packages"])
