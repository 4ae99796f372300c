"""Captioning through Snakemake with the transformers backend and a tiny random LLaVA."""

import json

import polars as pl
import pytest

from test_workflow import snakemake, write_config
from trsllava.captioning.tiny_models import build_tiny_llava


@pytest.fixture(scope="module")
def captioned_run(tmp_path_factory):
    model = build_tiny_llava(tmp_path_factory.mktemp("model") / "tiny-llava")
    workdir = write_config(
        tmp_path_factory.mktemp("captioning"),
        captioners={
            "tiny": {"backend": "transformers", "model": str(model), "prompts": ["rsicd_style", "rsrt"],
                     "shards": 3, "max_tokens": 8, "temperature": 0.7, "batch_size": 4},
        },
        encoders={"minilm": {"type": "sentence-transformers", "model": "minilm"}},
        fusions={},  # the default minilm+bm25 fusion needs bm25
        aggregations=["max"],
    )
    snakemake(workdir, "--cores", "2")
    return workdir


def test_shards_merge_into_the_caption_table(captioned_run):
    results = captioned_run / "results" / "sample" / "captions"
    assert sorted(p.name for p in results.joinpath("tiny").glob("shard-*")) == [f"shard-{i}-of-3.json" for i in range(3)]
    shard_images = [json.loads(p.read_text())["rows"] for p in sorted(results.joinpath("tiny").glob("shard-*"))]
    assert sorted(len({r["image_id"] for r in rows}) for rows in shard_images) == [20, 20, 20]
    table = pl.read_parquet(results / "tiny.parquet")
    # rsicd_style: one free text per image, kept even when cut at max_tokens, except the empty ones
    # (random weights, sampled with seeds that depend on the model's tmp path, now and then emit an
    # EOS first): those are listed by image in the quality report; random weights never produce
    # valid rsrt JSON, so rsrt contributes nothing to the table
    quality = json.loads((results / "tiny.quality.json").read_text())
    empty = {f["image_id"] for f in quality["rsicd_style"]["failures"] if f["status"] == "empty"}
    kept = table.filter(pl.col("prompt") == "rsicd_style")
    assert kept.height + len(empty) == 60 and not empty & set(kept["image_id"]) and len(empty) <= 3
    assert table.filter(pl.col("prompt") == "rsrt").is_empty()
    assert set(table["backend"]) == {"transformers"} and table["model_id"].str.ends_with("tiny-llava").all()
    assert json.loads(table["sampling"][0]) == {"max_tokens": 8, "temperature": 0.7, "seed": 0}


def test_quality_report_lists_every_failure(captioned_run):
    quality = json.loads((captioned_run / "results" / "sample" / "captions" / "tiny.quality.json").read_text())
    assert quality["rsrt"]["outputs"] == 60 * 5 and quality["rsrt"]["status"]["ok"] == 0
    assert len(quality["rsrt"]["failures"]) == 300
    assert quality["rsicd_style"]["outputs"] == 60


def test_generated_captions_are_evaluated(captioned_run):
    ablation = pl.read_csv(captioned_run / "results" / "ablation.csv")
    assert ablation.select("dataset", "captioner", "prompt", "encoder", "aggregation").rows() == [
        ("sample", "tiny", "rsicd_style", "minilm", "max")
    ]
    assert ablation["n_t2i_queries"].to_list() == [300] and 0 <= ablation["mR"][0] <= 100


def test_rerun_recomputes_nothing(captioned_run):
    assert "Nothing to be done" in snakemake(captioned_run, "-n").stdout


def test_unreachable_model_names_both_ways_out():
    from trsllava.captioning.backends import make_backend
    from trsllava.errors import TrsllavaError

    with pytest.raises(TrsllavaError) as error:
        make_backend("smol", {"backend": "transformers", "model": "HuggingFaceTB/SmolVLM-256M-Instruct"})
    message = str(error.value)
    assert "HuggingFaceTB/SmolVLM-256M-Instruct" in message and "\n" not in message
    assert "captioners.smol.model to a local model folder" in message and "reaches the Hugging Face hub" in message
