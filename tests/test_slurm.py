"""The workflow submitted to a real SLURM cluster through the shipped profile (workflow/profiles/slurm).

The cluster is the one-node cluster of scripts/slurm_up.sh (munge, slurmctld, slurmd on this machine,
one fake GPU): reused when one is running (`.ci/run` starts it), otherwise started here as root and
stopped afterwards. Without a cluster and without root the tests fail, naming the way out; they never
skip. There is no accounting database, so the plugin reads job states from squeue and the test reads
each job's record from `scontrol show job` (kept for MinJobAge after the job ends), polled during the
run so that no finished job ages out before it is checked.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from test_workflow import ROOT, SNAKEMAKE, snakemake, write_config
from trsllava.encoders.dense import DenseRepresentation

PROFILE = ROOT / "workflow" / "profiles" / "slurm"
WORKSTATION = ROOT / "workflow" / "profiles" / "workstation"
RUN_TIMEOUT_S = 1200
# every job of the test config; local rules stay out of SLURM: `all` (no action), fetch_captioner_model
# (login nodes reach the hub, compute nodes often do not) and manifest
EXPECTED_JOBS = Counter({
    "prepare_dataset": 1, "import_captions": 1, "caption_shard": 2, "caption_quality": 1, "merge_captions": 1,
    "embed_shard": 6, "embed_references": 1, "embed_captions": 2, "build_index": 2, "evaluate": 2, "ablation": 1,
    "draw_figures": 1,
})
CAPTIONER_MEM_MB = 3000
ENCODER_MEM_MB = 2500
ENCODER_SHARDS = 2  # x 3 text tables: the human captions and two caption sets


def _sh(*cmd, check=True, timeout=60):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def cluster():
    """A usable SLURM cluster with a (fake) GPU: reused if running, else started here and stopped after."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.fail("snakemake-executor-plugin-slurm is not installed: pip install -e '.[dev]' (or make install)")
    up = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_up.sh")], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        pytest.fail(
            "no usable SLURM cluster: scripts/slurm_up.sh failed (it reuses a running cluster with a GPU, "
            "or installs and starts one as root):\n" + up.stdout + up.stderr
        )
    started = "slurm_up.sh: started" in up.stdout
    cpus = int(_sh("sinfo", "-h", "-N", "-o", "%c").stdout.split()[0])
    yield {"cpus": cpus, "started": started}
    if started:
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm_down.sh")], capture_output=True, text=True, timeout=120)


def _scontrol_jobs():
    """Every job slurmctld still knows, as dicts of scontrol's key=value fields (-d: with the GRES
    allocated on the node, JOB_GRES)."""
    out = subprocess.run(["scontrol", "-d", "-o", "show", "job"], capture_output=True, text=True, timeout=30).stdout
    return [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in out.splitlines() if line.startswith("JobId=")]


class JobWatcher(threading.Thread):
    """Polls scontrol during the run: the last record of every job submitted from `workdir`, and the
    states each job was seen in."""

    def __init__(self, workdir: Path):
        super().__init__(daemon=True)
        self.workdir = str(workdir)
        self.records: dict[str, dict] = {}
        self.states: dict[str, set] = {}
        self.done = threading.Event()

    def poll(self):
        for job in _scontrol_jobs():
            if job.get("WorkDir") == self.workdir:
                self.records[job["JobId"]] = job
                self.states.setdefault(job["JobId"], set()).add(job.get("JobState"))

    def run(self):
        while not self.done.is_set():
            try:
                self.poll()
            except Exception:  # a slow controller answer: try again next round
                pass
            self.done.wait(1.0)

    def stop(self):
        self.done.set()
        self.join(timeout=30)
        self.poll()


def _run_bounded(cmd, env, cwd, timeout):
    """Run a Snakemake command; past `timeout` it gets SIGINT (which stops a stuck SLURM run and
    cancels its jobs; SIGTERM does not), then SIGKILL."""
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output, False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        return process.returncode, output, True


def _submitted_jobs(output):
    """Snakemake's view of each submitted job, from its log: SLURM job id -> rule, threads, resources."""
    blocks = {}
    for block in re.split(r"\n(?=\[[A-Z][a-z]{2} [A-Z][a-z]{2} )", output):
        rule = re.search(r"^rule (\S+):$", block, re.M)
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
        if not (rule and jobid):
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        blocks[jobid.group(1)] = {
            "rule": rule.group(1),
            "threads": int(threads.group(1)) if threads else 1,
            "resources": dict(item.split("=", 1) for item in resources.group(1).split(", ")),
        }
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)
    return {slurm_id: blocks[jobid] for jobid, slurm_id in submitted}


def _minutes(limit: str) -> int:
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def _megabytes(memory: str) -> int:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", memory).groups()
    return round(float(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[unit])


def _test_config(root: Path, name: str, model: Path) -> Path:
    return write_config(
        root / name,
        captioners={
            "claude-sample": {"backend": "import", "model": "claude (sample caption set)", "files": {"sample": "builtin"}},
            "tiny": {"backend": "transformers", "model": str(model), "prompts": ["rsicd_style"], "shards": 2,
                     "max_tokens": 8, "gpus": 1, "mem_mb": CAPTIONER_MEM_MB},
        },
        encoders={"minilm": {"type": "sentence-transformers", "model": "minilm", "shards": ENCODER_SHARDS, "gpus": 1,
                             "mem_mb": ENCODER_MEM_MB}},
        aggregations=["max"],
    )


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The workflow through `--profile workflow/profiles/slurm`, with a test-side profile on top that
    replaces only what this cluster needs (account, partition, CPUs per GPU, squeue status, fast
    polling), beside the same workflow run locally."""
    from trsllava.captioning.tiny_models import build_tiny_llava

    root = tmp_path_factory.mktemp("slurm")
    model = build_tiny_llava(root / "tiny-llava")
    workdir = _test_config(root, "cluster", model)
    localdir = _test_config(root, "local", model)

    shipped = yaml.safe_load((PROFILE / "config.yaml").read_text())
    set_resources = {rule: dict(values) for rule, values in shipped["set-resources"].items()}
    # the test node has only a few CPUs; a request above them would never be scheduled
    for values in set_resources.values():
        if "cpus_per_gpu" in values:
            values["cpus_per_gpu"] = min(values["cpus_per_gpu"], cluster["cpus"])
    overrides = {
        "default-resources": {**shipped["default-resources"], "slurm_account": "trsllava-test", "slurm_partition": "debug"},
        "set-resources": set_resources,
        "slurm-status-command": "squeue",  # no accounting database, so no sacct
        "slurm-init-seconds-before-status-checks": 2,
        "latency-wait": 5,
    }
    test_profile = root / "test-profile"
    test_profile.mkdir()
    (test_profile / "config.yaml").write_text(yaml.safe_dump(overrides))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    # the local reference run shares the CPUs with the cluster's jobs, in parallel to save wall time
    local = subprocess.Popen([*SNAKEMAKE, "--directory", str(localdir), "--cores", "2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = JobWatcher(workdir)
    watcher.start()
    started = time.monotonic()
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--profile", str(PROFILE), "--profile", str(test_profile)]
    try:
        returncode, output, timed_out = _run_bounded(cmd, env, ROOT, RUN_TIMEOUT_S)
    finally:
        watcher.stop()
        local_output, _ = local.communicate(timeout=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    (root / "slurm-run.log").write_text(output)
    if timed_out or returncode != 0:
        leftover = [j["JobId"] for j in watcher.records.values() if j.get("JobState") in ("PENDING", "RUNNING")]
        if leftover:
            subprocess.run(["scancel", *leftover], capture_output=True)
        raise AssertionError(
            f"snakemake --profile workflow/profiles/slurm {'timed out' if timed_out else f'failed ({returncode})'} "
            f"after {elapsed:.0f} s:\n{output[-6000:]}"
        )
    assert local.returncode == 0, f"local reference run failed:\n{local_output[-5000:]}"
    return {"workdir": workdir, "localdir": localdir, "output": output, "watcher": watcher, "shipped": shipped,
            "overrides": overrides, "elapsed": elapsed}


def test_every_job_ran_as_a_slurm_job(slurm_run):
    records = slurm_run["watcher"].records
    submitted = _submitted_jobs(slurm_run["output"])
    assert Counter(job["rule"] for job in submitted.values()) == EXPECTED_JOBS
    # each job Snakemake submitted is a job slurmctld scheduled on the node and saw finish
    assert sorted(submitted, key=int) == sorted(records, key=int)
    for slurm_id, job in submitted.items():
        record = records[slurm_id]
        assert record["Comment"].startswith(f"rule_{job['rule']}"), record
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", record
        assert record["BatchFlag"] == "1" and record["NodeList"] not in ("", "(null)"), record
    # the jobs really went through the scheduler's queue: most were seen pending or running
    seen = set().union(*slurm_run["watcher"].states.values())
    assert {"RUNNING", "COMPLETED"} <= seen
    # SLURM's own logs of the jobs are kept (slurm-keep-successful-logs in the shipped profile)
    logs = list((slurm_run["workdir"] / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(logs) == sum(EXPECTED_JOBS.values())


def test_each_job_got_the_resources_snakemake_asked_for(slurm_run):
    """Partition, account, time limit, memory, CPUs and GPUs of every SLURM job are those Snakemake
    resolved from the rules, the shipped profile and the test overrides."""
    records = slurm_run["watcher"].records
    for slurm_id, job in _submitted_jobs(slurm_run["output"]).items():
        record, resources = records[slurm_id], job["resources"]
        where = f"{job['rule']} (SLURM job {slurm_id})"
        assert record["Partition"] == resources["slurm_partition"] == "debug", where
        assert record["Account"] == resources["slurm_account"] == "trsllava-test", where
        assert _minutes(record["TimeLimit"]) == int(resources["runtime"]), where
        assert _megabytes(record["MinMemoryNode"]) == int(resources["mem_mb"]), where
        gpus = int(resources.get("gpu", 0))
        if gpus:
            assert record.get("TresPerJob") == f"gres:gpu:{gpus}" and record["JOB_GRES"] == f"gpu:{gpus}", where
            assert int(record["NumCPUs"]) == int(resources["cpus_per_gpu"]) * gpus, where
        else:
            assert "gpu" not in record.get("TresPerJob", "") + record.get("JOB_GRES", ""), where
            assert int(record["NumCPUs"]) == job["threads"], where


def test_caption_shards_got_what_the_profile_and_captioner_declare(slurm_run):
    """The values of the shipped profile (caption_shard runtime, CPUs per GPU) and of the captioner
    (gpus: 1, mem_mb), read here from their own files, reached SLURM."""
    shipped = slurm_run["shipped"]["set-resources"]["caption_shard"]
    expected_cpus = slurm_run["overrides"]["set-resources"]["caption_shard"]["cpus_per_gpu"]
    records = slurm_run["watcher"].records
    shards = [r for r in records.values() if r["Comment"].startswith("rule_caption_shard_")]
    assert len(shards) == 2
    for record in shards:
        assert _minutes(record["TimeLimit"]) == shipped["runtime"]
        # requested (TresPerJob) and allocated on the node (JOB_GRES)
        assert record["TresPerJob"] == "gres:gpu:1" and record["JOB_GRES"] == "gpu:1"
        assert int(record["NumCPUs"]) == expected_cpus
        assert _megabytes(record["MinMemoryNode"]) == CAPTIONER_MEM_MB
    gpu_rules = ("rule_caption_shard_", "rule_embed_shard_")
    others = [r for r in records.values() if not r["Comment"].startswith(gpu_rules)]
    assert others and all(r["JOB_GRES"] == "(null)" for r in others)


def test_embedding_shards_got_what_the_profile_and_encoder_declare(slurm_run):
    """Each text table's embedding ran as ENCODER_SHARDS SLURM jobs with the encoder's gpus and mem_mb
    and the shipped profile's embed_shard runtime and CPUs per GPU; together they embedded each
    distinct text of the table once, and the merge jobs assembled the same vectors as the local run."""
    shipped = slurm_run["shipped"]["set-resources"]["embed_shard"]
    expected_cpus = slurm_run["overrides"]["set-resources"]["embed_shard"]["cpus_per_gpu"]
    shards = [r for r in slurm_run["watcher"].records.values() if r["Comment"].startswith("rule_embed_shard_")]
    assert len(shards) == 3 * ENCODER_SHARDS
    for record in shards:
        assert _minutes(record["TimeLimit"]) == shipped["runtime"]
        assert record["TresPerJob"] == "gres:gpu:1" and record["JOB_GRES"] == "gpu:1"
        assert int(record["NumCPUs"]) == expected_cpus
        assert _megabytes(record["MinMemoryNode"]) == ENCODER_MEM_MB
    results = slurm_run["workdir"] / "results" / "sample"
    for table, source in (("references", "dataset/references.parquet"), ("captions/tiny", "captions/tiny.parquet"),
                          ("captions/claude-sample", "captions/claude-sample.parquet")):
        reports = [json.loads((results / "embeddings" / "minilm" / "shards" / table / f"shard-{i}-of-{ENCODER_SHARDS}.json").read_text())
                   for i in range(ENCODER_SHARDS)]
        distinct = pl.read_parquet(results / source)["text"].n_unique()
        assert sum(r["texts"] for r in reports) == distinct and all(r["texts"] for r in reports), table
        assert sum(stats["encoded"] + stats["cached"] for r in reports for stats in r["caches"].values()) == distinct
        cluster_rep = DenseRepresentation.load(results / "embeddings" / "minilm" / table)
        local_rep = DenseRepresentation.load(slurm_run["localdir"] / "results" / "sample" / "embeddings" / "minilm" / table)
        assert cluster_rep.texts == local_rep.texts
        np.testing.assert_allclose(cluster_rep.vectors, local_rep.vectors, atol=1e-6)


def test_results_equal_a_local_run(slurm_run):
    cluster = pl.read_csv(slurm_run["workdir"] / "results" / "ablation.csv")
    local = pl.read_csv(slurm_run["localdir"] / "results" / "ablation.csv")
    assert sorted(set(cluster["captioner"])) == ["claude-sample", "tiny"]
    assert cluster.height == 7  # claude-sample: 6 caption sets, tiny: rsicd_style; one encoder, one aggregation
    assert cluster.equals(local)
    captions = [pl.read_parquet(d / "results" / "sample" / "captions" / "tiny.parquet").sort("image_id", "variant")
                for d in (slurm_run["workdir"], slurm_run["localdir"])]
    assert captions[0]["text"].to_list() == captions[1]["text"].to_list()
    print(f"SLURM run: {slurm_run['elapsed']:.0f} s")


def test_rerun_through_the_profile_finds_nothing_to_do(slurm_run):
    result = snakemake(slurm_run["workdir"], "-n", "--profile", str(PROFILE))
    assert "Nothing to be done" in result.stdout


def test_profiles_are_the_only_place_for_cluster_settings():
    shipped = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert shipped["executor"] == "slurm"
    assert shipped["default-resources"]["slurm_account"] == "FILL_IN_ACCOUNT"
    assert shipped["default-resources"]["slurm_partition"] == "FILL_IN_PARTITION"
    for rules in (ROOT / "workflow" / "rules").glob("*.smk"):
        assert "slurm" not in rules.read_text().lower(), rules


def test_workstation_profile_plans_the_gpu_jobs(tmp_path):
    from trsllava.captioning.tiny_models import build_tiny_llava

    workdir = _test_config(tmp_path, "workstation", build_tiny_llava(tmp_path / "tiny-llava"))
    # a dry run plans no further than the model checkpoint until its record exists: fetch it first
    # (a local folder, so the record says available), as the first minute of a real run would
    fetched = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "1", str(workdir / "results" / "models" / "tiny.json")],
                             capture_output=True, text=True, cwd=ROOT)
    assert fetched.returncode == 0, fetched.stdout[-3000:] + fetched.stderr[-3000:]
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--profile", str(WORKSTATION), "-n"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"caption_shard\s+2", result.stdout) and re.search(r"embed_shard\s+6", result.stdout)
    assert yaml.safe_load((WORKSTATION / "config.yaml").read_text())["resources"] == {"gpu": 1}
