"""The default config captions for real with a hub VLM; without the hub the models that cannot be had
are skipped (and said so) while the rest of the experiment runs; `required: true` fails in one line."""

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
UNREACHABLE_HUB = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # a hub that refuses connections


def test_default_captioner_is_a_small_open_vlm_on_auto():
    captioner = yaml.safe_load((ROOT / "config.yaml").read_text())["captioners"]["smolvlm"]
    assert captioner["backend"] == "auto" and captioner["model"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert captioner["datasets"] == ["sample"] and not captioner.get("required", False)


def default_workdir(tmp_path, **changes):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config.update(changes)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def run_with_env(workdir, env_changes, *args):
    env = {**os.environ, "HF_HOME": str(workdir / "hf-home"), **env_changes}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def run_without_hub(tmp_path_factory):
    """config.yaml as shipped (only `results` moved) on a machine whose hub refuses connections and
    whose cache is empty: SmolVLM and CLIP cannot be had."""
    workdir = default_workdir(tmp_path_factory.mktemp("nohub"))
    return workdir, run_with_env(workdir, UNREACHABLE_HUB, "--cores", "2")


def test_default_run_without_the_hub_skips_what_it_cannot_have_and_finishes(run_without_hub):
    workdir, result = run_without_hub
    assert result.returncode == 0, result.stderr[-4000:]
    ablation = pl.read_csv(workdir / "results" / "ablation.csv")
    assert set(ablation["captioner"]) == {"claude-sample", "oracle"}  # no smolvlm, no clip:vit-b32 rows
    assert set(ablation["encoder"]) == {"minilm", "bm25", "minilm+bm25"}
    records = {name: json.loads((workdir / "results" / "models" / path).read_text())
               for name, path in (("smolvlm", "smolvlm.json"), ("vit-b32", "clip/vit-b32.json"))}
    for name, record in records.items():
        assert record["available"] is False and record["required"] is False, record
        assert "hub unreachable" in record["reason"] and "not in the local cache" in record["reason"]
        assert "to a local model folder" in record["ways_out"] and "reaches the Hugging Face hub" in record["ways_out"]
    # no caption job ran for the skipped captioner
    assert not (workdir / "results" / "sample" / "captions" / "smolvlm.parquet").exists()


def test_what_was_skipped_is_said_in_the_summary_manifest_and_report_table(run_without_hub):
    workdir, result = run_without_hub
    summary = result.stdout[result.stdout.index("trsllava: run summary"):].splitlines()
    summary = summary[: next(i for i, line in enumerate(summary) if line.startswith("report:")) + 1]
    assert len(summary) < 25, summary
    text = "\n".join(summary)
    assert "best        claude-sample" in text and "diagnostic  oracle" in text and "(ties:" in text
    assert "smolvlm (HuggingFaceTB/SmolVLM-256M-Instruct): hub unreachable" in text
    assert "clip:vit-b32 (openai/clip-vit-base-patch32): hub unreachable" in text
    assert "local model folder" in text and f"{workdir}/results/ablation.csv" in text and "figures:" in text
    manifest = json.loads((workdir / "results" / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"] if not m["available"]] == ["smolvlm", "vit-b32"]
    assert len(manifest["skipped"]) == 2 and all("local model folder" in line for line in manifest["skipped"])
    table = pl.read_csv(workdir / "results" / "model_availability.csv")
    assert table.select("name", "available").rows() == [("smolvlm", False), ("vit-b32", False)]
    report = snakemake(workdir, "--report", str(workdir / "report.html"))
    assert report.returncode == 0 and "model_availability.csv" in (workdir / "report.html").read_text(errors="replace")


def test_a_second_run_retries_the_skipped_models_and_reruns_nothing_else(run_without_hub):
    workdir, _ = run_without_hub
    again = run_with_env(workdir, UNREACHABLE_HUB, "--cores", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    ran = {line.split()[-1].rstrip(":") for line in (again.stdout + again.stderr).splitlines()
           if line.startswith(("rule ", "localrule ", "checkpoint ", "localcheckpoint "))}
    assert ran - {"all"} == {"fetch_captioner_model", "fetch_clip_model"}, ran
    assert "trsllava: run summary" in again.stdout


@pytest.mark.parametrize("network", [
    {"HF_HUB_OFFLINE": "1"},  # offline mode, nothing cached
    UNREACHABLE_HUB,
])
def test_a_required_model_that_cannot_be_had_fails_in_one_clean_line(tmp_path, network):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["captioners"]["smolvlm"]["required"] = True
    workdir = default_workdir(tmp_path, captioners=config["captioners"])
    result = run_with_env(workdir, network, "--cores", "1")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.startswith("trsllava: ")]
    assert len(lines) == 1, output[-3000:]
    line = lines[0]
    assert "cannot fetch HuggingFaceTB/SmolVLM-256M-Instruct from the Hugging Face hub" in line
    assert "captioners.smolvlm says required: true" in line and "captioners.smolvlm.model to a local model folder" in line
    assert "Traceback" not in output and "RuleException" not in output and "Error in rule" not in output
    assert output.rstrip().endswith(line)  # the last thing on screen
    # nothing of the experiment ran
    assert not (workdir / "results" / "sample").exists()


def fake_hub_cache(hf_home, repo_id, folder):
    """A Hugging Face cache holding ``folder`` as the main-branch snapshot of ``repo_id``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / FAKE_COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)


def test_a_skipped_model_is_captioned_once_it_is_in_the_cache_and_stamped_on_every_caption(tmp_path):
    """The auto backend on a hub id. First run offline with nothing cached: the captioner is skipped and
    the imported caption set is evaluated. Then the model lands in the cache: the next run fetches it
    (one job records the commit), captions with it in two shards and adds its rows, without redoing
    the imported set's evaluation; every caption names the hub id and commit (not the cache folder)."""
    imported = yaml.safe_load((ROOT / "config.yaml").read_text())["captioners"]["claude-sample"]
    workdir = write_config(tmp_path, encoders={"minilm": {"type": "sentence-transformers", "model": "minilm"}},
                           aggregations=["max"], captioners={"claude-sample": imported, "tiny": {
                               "backend": "auto", "model": "trsllava-test/tiny-llava", "prompts": ["rsicd_style"],
                               "shards": 2, "max_tokens": 4, "temperature": 0}})
    first = run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "--cores", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert set(pl.read_csv(workdir / "results" / "ablation.csv")["captioner"]) == {"claude-sample"}
    assert "tiny (trsllava-test/tiny-llava): hub unreachable (HF_HUB_OFFLINE is set)" in first.stdout
    evaluated = workdir / "results" / "sample" / "eval" / "minilm" / "claude-sample.metrics.parquet"
    before = evaluated.stat().st_mtime_ns

    fake_hub_cache(tmp_path / "hf-home", "trsllava-test/tiny-llava", build_tiny_llava(tmp_path / "tiny"))
    run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "--cores", "1", str(workdir / "results" / "models" / "tiny.json"))
    plan = run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "-n", "--quiet", "rules").stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in plan.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["caption_shard"] == 2 and counts["merge_captions"] == 1 and "fetch_captioner_model" not in counts, plan
    second = run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "--cores", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert set(pl.read_csv(workdir / "results" / "ablation.csv")["captioner"]) == {"claude-sample", "tiny"}
    assert evaluated.stat().st_mtime_ns == before  # the imported set's evaluation was not redone
    assert "skipped (" not in second.stdout[second.stdout.index("trsllava: run summary"):]
    record = json.loads((workdir / "results" / "models" / "tiny.json").read_text())
    assert record["model"] == "trsllava-test/tiny-llava" and record["revision"] == FAKE_COMMIT and record["source"] == "hub"
    assert record["available"] is True
    table = pl.read_parquet(workdir / "results" / "sample" / "captions" / "tiny.parquet")
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
