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

from test_workflow import ROOT, snakemake

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


# The tests below continue the no-hub scenario above (they come after it in this file, and pytest
# runs a module's tests in file order): the default models land in the cache, and the next run
# adds them. One incremental run instead of a fresh default run, which saves minutes of test time.
@pytest.fixture(scope="module")
def run_with_models_cached(run_without_hub, tmp_path_factory):
    """The no-hub workdir after tiny random models were placed in its Hugging Face cache under the
    default hub ids (a SmolVLM of the default captioner's architecture, Idefics3, and a CLIP): the
    fetch jobs find them; the plan, then a run, offline."""
    from trsllava.baselines.tiny_clip import build_tiny_clip
    from trsllava.captioning.tiny_smolvlm import build_tiny_smolvlm

    workdir, _ = run_without_hub
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    smolvlm_id = default["captioners"]["smolvlm"]["model"]
    clip_id = default["baselines"]["clip"]["models"]["vit-b32"]["model"]
    models = tmp_path_factory.mktemp("tiny-models")
    fake_hub_cache(workdir / "hf-home", smolvlm_id, build_tiny_smolvlm(models / "tiny-smolvlm"))
    fake_hub_cache(workdir / "hf-home", clip_id, build_tiny_clip(models / "tiny-clip"))
    evaluated = workdir / "results" / "sample" / "eval" / "minilm" / "claude-sample.metrics.parquet"
    before = evaluated.stat().st_mtime_ns
    fetched = run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "--cores", "1", str(workdir / "results" / "models" / "smolvlm.json"),
                           str(workdir / "results" / "models" / "clip" / "vit-b32.json"))
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    plan = run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "-n", "--quiet", "rules").stdout
    result = run_with_env(workdir, {"HF_HUB_OFFLINE": "1"}, "--cores", "2")
    return {"workdir": workdir, "plan": plan, "result": result, "smolvlm_id": smolvlm_id,
            "evaluated": evaluated, "evaluated_before": before}


def test_once_in_the_cache_the_skipped_models_are_planned_and_the_rest_is_not_redone(run_with_models_cached):
    plan, result = run_with_models_cached["plan"], run_with_models_cached["result"]
    counts = {line.split()[0]: int(line.split()[1]) for line in plan.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["caption_shard"] == 2 and counts["merge_captions"] == 1 and "fetch_captioner_model" not in counts, plan
    assert "prepare_dataset" not in counts and "import_captions" not in counts, plan
    assert result.returncode == 0, result.stderr[-4000:]
    # the imported set's evaluation was not redone
    assert run_with_models_cached["evaluated"].stat().st_mtime_ns == run_with_models_cached["evaluated_before"]
    assert "skipped (" not in result.stdout[result.stdout.index("trsllava: run summary"):]


def test_the_default_config_then_runs_every_job_and_stamps_the_hub_commit_on_every_caption(run_with_models_cached):
    """config.yaml exactly as shipped (only `results` moved), offline, the auto backend on a hub id:
    the ablation table has the SmolVLM, imported, fusion, CLIP and oracle rows; every caption names
    the hub id and commit (not the cache folder)."""
    workdir, smolvlm_id = run_with_models_cached["workdir"], run_with_models_cached["smolvlm_id"]
    assert run_with_models_cached["result"].returncode == 0
    ablation = pl.read_csv(workdir / "results" / "ablation.csv")
    assert set(ablation["captioner"]) == {"smolvlm", "claude-sample", "clip:vit-b32", "oracle"}
    assert set(ablation["encoder"]) == {"minilm", "bm25", "minilm+bm25", "clip"}
    record = json.loads((workdir / "results" / "models" / "smolvlm.json").read_text())
    assert record["model"] == smolvlm_id and record["revision"] == FAKE_COMMIT and record["source"] == "hub"
    assert record["available"] is True
    smolvlm = pl.read_parquet(workdir / "results" / "sample" / "captions" / "smolvlm.parquet")
    assert set(smolvlm["model_id"]) == {smolvlm_id} and set(smolvlm["model_revision"]) == {FAKE_COMMIT}
    assert set(smolvlm["prompt"]) <= {"rsicd_style", "one_sentence"} and set(smolvlm["backend"]) == {"transformers"}
    log = (workdir / "results" / "logs" / "caption_shard" / "sample" / "smolvlm" / "shard-0-of-2.log").read_text()
    assert "captioning backend auto -> transformers" in log
    quality = json.loads((workdir / "results" / "sample" / "captions" / "smolvlm.quality.json").read_text())
    assert set(quality) == {"rsicd_style", "one_sentence", "images"}  # images: those that could not be captioned
    # the default's processor option reached the backend (and so the cache key of every caption)
    shard = json.loads((workdir / "results" / "sample" / "captions" / "smolvlm" / "shard-0-of-2.json").read_text())
    assert shard["backend"]["processor_options"] == {"do_image_splitting": False}
    assert shard["backend"]["model_id"] == smolvlm_id and shard["backend"]["backend"] == "transformers"
    manifest = json.loads((workdir / "results" / "manifest.json").read_text())
    assert {"captioner": "smolvlm", "model": smolvlm_id, "revision": FAKE_COMMIT} in [
        {k: m[k] for k in ("captioner", "model", "revision")} for m in manifest["captioners"]]
    assert not manifest["skipped"]
