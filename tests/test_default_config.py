"""The default config captions for real with a hub VLM; offline it fails in one line naming the two
ways out, and config.offline.yaml is the same experiment with imported caption sets only."""

import json
import os
import shutil
import subprocess
import sys

import polars as pl
import pytest
import yaml

from test_workflow import ROOT, snakemake, write_config
from trsllava.captioning.tiny_models import build_tiny_llava

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_offline_config_is_the_default_experiment_without_downloads():
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    offline = yaml.safe_load((ROOT / "config.offline.yaml").read_text())
    assert {key for key in default.keys() | offline.keys() if default.get(key) != offline.get(key)} == {"captioners", "baselines"}
    assert offline["baselines"] == {**default["baselines"], "clip": {"models": {}}}  # CLIP weights come from the hub
    assert {entry["backend"] for entry in offline["captioners"].values()} == {"import"}
    imported = {name: entry for name, entry in default["captioners"].items() if entry["backend"] == "import"}
    assert offline["captioners"] == imported


def test_default_captioner_is_a_small_open_vlm_on_auto():
    captioner = yaml.safe_load((ROOT / "config.yaml").read_text())["captioners"]["smolvlm"]
    assert captioner["backend"] == "auto" and captioner["model"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert captioner["datasets"] == ["sample"]


def default_workdir(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def run_with_env(workdir, env_changes, *args):
    env = {**os.environ, "HF_HOME": str(workdir / "hf-home"), **env_changes}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), *args], capture_output=True, text=True, env=env)


def test_default_dry_run_fetches_the_model_once_then_shards(tmp_path):
    workdir = default_workdir(tmp_path)
    plan = snakemake(workdir, "-n", "--quiet", "rules").stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in plan.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["fetch_captioner_model"] == 1 and counts["caption_shard"] == 2 and counts["merge_captions"] == 1


@pytest.mark.parametrize("network", [
    {"HF_HUB_OFFLINE": "1"},  # offline mode, nothing cached
    {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},  # a hub that refuses connections
])
def test_default_run_without_the_hub_fails_in_one_line_naming_two_ways_out(tmp_path, network):
    workdir = default_workdir(tmp_path)
    result = run_with_env(workdir, network, "--cores", "1", f"{workdir}/results/models/smolvlm.json")
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("trsllava: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    line = lines[0]
    assert "cannot fetch HuggingFaceTB/SmolVLM-256M-Instruct from the Hugging Face hub" in line
    assert "captioners.smolvlm.model to a local model folder" in line and "config.offline.yaml" in line
    assert not (workdir / "results" / "models" / "smolvlm.json").exists()


def fake_hub_cache(hf_home, repo_id, folder):
    """A Hugging Face cache holding ``folder`` as the main-branch snapshot of ``repo_id``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / FAKE_COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)


def test_hub_model_found_in_the_cache_is_recorded_and_stamped_on_every_caption(tmp_path):
    """The auto backend on a hub id, offline with the model cached: one fetch job records the commit,
    the shard jobs load the snapshot, and every caption names the hub id and commit (not the folder)."""
    fake_hub_cache(tmp_path / "hf-home", "trsllava-test/tiny-llava", build_tiny_llava(tmp_path / "tiny"))
    workdir = write_config(tmp_path, captioners={"tiny": {
        "backend": "auto", "model": "trsllava-test/tiny-llava", "prompts": ["rsicd_style"], "shards": 2,
        "max_tokens": 4, "temperature": 0}})
    target = f"{workdir}/results/sample/captions/tiny.parquet"
    result = run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "--cores", "2", target)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((workdir / "results" / "models" / "tiny.json").read_text())
    assert record["model"] == "trsllava-test/tiny-llava" and record["revision"] == FAKE_COMMIT and record["source"] == "hub"
    table = pl.read_parquet(target)
    assert table.height == 60 and set(table["model_id"]) == {"trsllava-test/tiny-llava"}
    assert set(table["model_revision"]) == {FAKE_COMMIT} and set(table["backend"]) == {"transformers"}
    log = (workdir / "results" / "logs" / "caption_shard" / "sample" / "tiny" / "shard-0-of-2.log").read_text()
    assert "captioning backend auto -> transformers" in log


def test_default_config_runs_end_to_end_with_tiny_models_under_the_default_ids(tmp_path):
    """config.yaml exactly as shipped (only `results` moved), offline, with a tiny random SmolVLM
    (Idefics3, the default captioner's architecture) and a tiny random CLIP placed in the Hugging
    Face cache under the default hub ids: every default job runs, and the ablation table has the
    SmolVLM, imported, fusion, CLIP and oracle rows."""
    from trsllava.baselines.tiny_clip import build_tiny_clip
    from trsllava.captioning.tiny_smolvlm import build_tiny_smolvlm

    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    smolvlm_id = default["captioners"]["smolvlm"]["model"]
    clip_id = default["baselines"]["clip"]["models"]["vit-b32"]["model"]
    fake_hub_cache(tmp_path / "hf-home", smolvlm_id, build_tiny_smolvlm(tmp_path / "tiny-smolvlm"))
    fake_hub_cache(tmp_path / "hf-home", clip_id, build_tiny_clip(tmp_path / "tiny-clip"))
    workdir = default_workdir(tmp_path)
    result = run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "--cores", "2")
    assert result.returncode == 0, result.stderr[-4000:]

    ablation = pl.read_csv(workdir / "results" / "ablation.csv")
    captioners = set(ablation["captioner"])
    assert captioners == {"smolvlm", "claude-sample", "clip:vit-b32", "oracle"}
    assert set(ablation["encoder"]) == {"minilm", "bm25", "minilm+bm25", "clip"}
    smolvlm = pl.read_parquet(workdir / "results" / "sample" / "captions" / "smolvlm.parquet")
    assert set(smolvlm["model_id"]) == {smolvlm_id} and set(smolvlm["model_revision"]) == {FAKE_COMMIT}
    assert set(smolvlm["prompt"]) <= {"rsicd_style", "one_sentence"}
    quality = json.loads((workdir / "results" / "sample" / "captions" / "smolvlm.quality.json").read_text())
    assert set(quality) == {"rsicd_style", "one_sentence", "images"}  # images: those that could not be captioned
    # the default's processor option reached the backend (and so the cache key of every caption)
    shard = json.loads((workdir / "results" / "sample" / "captions" / "smolvlm" / "shard-0-of-2.json").read_text())
    assert shard["backend"]["processor_options"] == {"do_image_splitting": False}
    assert shard["backend"]["model_id"] == smolvlm_id and shard["backend"]["backend"] == "transformers"
    manifest = json.loads((workdir / "results" / "manifest.json").read_text())
    assert {"captioner": "smolvlm", "model": smolvlm_id, "revision": FAKE_COMMIT} in [
        {k: m[k] for k in ("captioner", "model", "revision")} for m in manifest["captioners"]]
