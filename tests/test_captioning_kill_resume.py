"""A Snakemake run killed mid-captioning (SIGKILL to the whole process group, as an OOM killer or a
lost node would) and rerun: the merged caption table equals an uninterrupted run's, every caption
finished before the kill is kept byte for byte, and none is computed twice."""

import json
import os
import signal
import subprocess
import time

import polars as pl
import pytest

from test_workflow import SNAKEMAKE, snakemake, write_config
from trsllava.captioning.tiny_models import build_tiny_llava

TABLE = "results/sample/captions/tiny.parquet"
JOBS = 60 * 2  # sample images x prompts (one variant each)


def captioning_config(workdir, model):
    return write_config(workdir, captioners={"tiny": {
        "backend": "transformers", "model": str(model), "prompts": ["rsicd_style", "one_sentence"], "shards": 1,
        "max_tokens": 24, "temperature": 0.8, "batch_size": 2}})


def progress_lines(workdir):
    path = workdir / "results" / "sample" / "captions" / "tiny" / "progress" / "shard-0-of-1.jsonl"
    return path.read_text().splitlines(keepends=True) if path.is_file() else []


def comparable(table: pl.DataFrame) -> pl.DataFrame:
    return table.drop("source").sort("image_id", "prompt", "variant", "field", "text")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("model") / "tiny-llava")


def test_killed_run_resumes_without_loss_or_recomputation(tmp_path, model):
    reference = captioning_config(tmp_path / "uninterrupted", model)
    snakemake(reference, "--cores", "2", str(reference / TABLE))

    workdir = captioning_config(tmp_path / "killed", model)
    target = str(workdir / TABLE)
    run = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", target],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(progress_lines(workdir)) < 10 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    before = progress_lines(workdir)
    assert 10 <= len(before) < JOBS, f"the kill should land mid-shard, found {len(before)} of {JOBS} finished"
    assert not (workdir / TABLE).exists()

    # what a user does after a crash: release the stale lock, rerun the incomplete job
    snakemake(workdir, "--unlock")
    snakemake(workdir, "--cores", "2", "--rerun-incomplete", target)
    after = progress_lines(workdir)
    complete_before = [line for line in before if line.endswith("\n")]  # a torn last line is redone
    assert after[:len(complete_before)] == complete_before
    keys = [json.loads(line)["key"] for line in after]
    assert len(keys) == JOBS and len(set(keys)) == JOBS  # each job once: nothing recomputed or lost
    log = (workdir / "results" / "logs" / "caption_shard" / "sample" / "tiny" / "shard-0-of-1.log").read_text()
    assert f"{JOBS - len(complete_before)} image x prompt jobs to run, {len(complete_before)} already finished" in log

    resumed = pl.read_parquet(workdir / TABLE)
    uninterrupted = pl.read_parquet(reference / TABLE)
    assert resumed.height == uninterrupted.height > 0
    assert comparable(resumed).equals(comparable(uninterrupted))
