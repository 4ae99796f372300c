"""Faults at every stage after captioning (the captioning kill is tests/test_captioning_kill_resume.py).

- SIGKILL of the whole Snakemake process group in the middle of an embedding job, an index build and
  an evaluation (each at a known point: right after one of the job's files was written, through the
  hook of tests/fault_injection/sitecustomize.py), then `snakemake --unlock` and
  `--rerun-incomplete`: the outputs equal an uninterrupted run's and no job finished before a kill
  runs again.
- A full disk while an output is written (the kernel refuses writes past a size limit in the middle
  of the file, and in unit tests an ENOSPC raised half-way): no partial file or folder is left under
  an output's name, an older output stays intact, Snakemake plans the job again, and a rerun gives
  the uninterrupted outputs.
- Two runs on one results folder from two working directories: the second refuses in one line
  naming the first; after the first is SIGKILLed, a new run starts without any manual unlocking.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from test_workflow import ROOT, SNAKEMAKE, snakemake, write_config

FAULTS = Path(__file__).resolve().parent / "fault_injection"
SAMPLE = "results/sample"


def configure(workdir: Path, results: Path | None = None, encoders=("minilm",)) -> Path:
    write_config(workdir, encoders={e: {"type": "bm25"} if e == "bm25" else {"type": "sentence-transformers", "model": e}
                                    for e in encoders},
                 aggregations=["max"], figures={"formats": ["png"]})
    if results is not None:
        import yaml

        config = yaml.safe_load((workdir / "config.yaml").read_text())
        config["results"] = str(results)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def targets(workdir: Path) -> list[str]:
    return [str(workdir / "results" / "ablation.csv"), str(workdir / SAMPLE / "index" / "minilm" / "claude-sample")]


def fault_env(**variables) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), env.get("PYTHONPATH")]))
    env.update(variables)
    return env


def start(workdir: Path, *args, env=None) -> subprocess.Popen:
    """A run in its own process group; its output goes to workdir/run.out (a pipe could fill up and block it)."""
    with open(workdir / "run.out", "w") as out:
        return subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def run_until_paused(workdir: Path, pattern: str, *args) -> tuple[subprocess.Popen, str]:
    """Start a run whose job pauses right after writing a file matching ``pattern``; return once it does."""
    marker = workdir / "paused-at"
    marker.unlink(missing_ok=True)
    run = start(workdir, *args, env=fault_env(TRSLLAVA_TEST_PAUSE_AFTER=pattern, TRSLLAVA_TEST_MARKER=str(marker)))
    deadline = time.monotonic() + 420
    while not marker.exists():
        if run.poll() is not None:
            raise AssertionError(f"the run ended (rc {run.returncode}) before pausing at {pattern}:\n"
                                 f"{(workdir / 'run.out').read_text()[-4000:]}")
        if time.monotonic() > deadline:
            kill(run)
            raise AssertionError(f"no pause at {pattern}")
        time.sleep(0.2)
    time.sleep(0.3)  # the marker is written before the sleep starts
    return run, marker.read_text()


def kill(run: subprocess.Popen) -> None:
    """SIGKILL the whole process group: Snakemake and its running jobs, as an OOM killer or a lost node."""
    try:
        os.killpg(run.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    run.wait()


def incomplete_outputs(workdir: Path) -> set[str]:
    """The outputs Snakemake marked incomplete (jobs running at the kill), from .snakemake/incomplete."""
    base = workdir / ".snakemake" / "incomplete"
    found = set()
    for path in base.rglob("*"):
        if path.is_file() and path.name != "migration_underway":
            encoded = "".join(part.removeprefix("@") for part in path.relative_to(base).parts)
            found.add(base64.urlsafe_b64decode(encoded).decode())
    return found


def finished_files(workdir: Path) -> dict[str, int]:
    """mtime of every output file of a finished job (not a log, temporary or incomplete output)."""
    incomplete = incomplete_outputs(workdir)
    stamps = {}
    for path in (workdir / "results").rglob("*"):
        relative = path.relative_to(workdir / "results")
        if not path.is_file() or relative.parts[0] == "logs" or any(p.startswith(".") for p in relative.parts):
            continue
        if any(str(path) == out or str(path).startswith(out.rstrip("/") + "/") for out in incomplete):
            continue
        stamps[str(path)] = path.stat().st_mtime_ns
    return stamps


def outputs(workdir: Path) -> dict[str, object]:
    """Every output of a run in comparable form (frames, arrays, bytes; index.json without its timing)."""
    found = {}
    results = workdir / "results"
    for path in sorted(results.rglob("*")):
        relative = str(path.relative_to(results))
        if not path.is_file() or relative.startswith("logs") or path.name.startswith("."):  # logs, the results lock
            continue
        if relative.startswith("cache/"):
            # the embedding cache: its chunk files have random names (one per batch written, by whichever
            # job wrote it); what it holds is compared through the representations assembled from it
            continue
        if path.suffix == ".parquet":
            found[relative] = pl.read_parquet(path)
        elif path.suffix == ".npy":
            found[relative] = np.load(path)
        elif path.name == "index.json":
            found[relative] = {k: v for k, v in json.loads(path.read_text()).items() if k != "build_seconds"}
        elif path.name == "encoder.json":  # less the embedding cache's path, which names the working directory
            found[relative] = {k: v for k, v in json.loads(path.read_text()).items() if k != "cache"}
        elif path.suffix in (".png", ".pdf"):
            found[relative] = "figure"
        else:
            found[relative] = path.read_bytes()
    return found


def assert_same_outputs(workdir: Path, reference: Path) -> None:
    mine, theirs = outputs(workdir), outputs(reference)
    assert sorted(mine) == sorted(theirs)
    for name, value in theirs.items():
        if isinstance(value, pl.DataFrame):
            assert mine[name].equals(value), name
        elif isinstance(value, np.ndarray):
            assert np.array_equal(mine[name], value), name
        else:
            assert mine[name] == value, name


def no_temporaries(workdir: Path) -> list[str]:
    return [str(p) for p in (workdir / "results").rglob(".*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    workdir = configure(tmp_path_factory.mktemp("uninterrupted"))
    snakemake(workdir, "--cores", "2", *targets(workdir))
    return workdir


KILL_POINTS = [
    # (stage, file whose write the job has just finished when it is killed, the job's output: never accepted;
    # the run's target is that output, so that no later stage runs beside the paused job)
    ("embedding", "*/embeddings/minilm/captions/*/embeddings.npy", f"{SAMPLE}/embeddings/minilm/captions/claude-sample"),
    ("index building", "*/index/minilm/*/index.faiss", f"{SAMPLE}/index/minilm/claude-sample"),
    ("evaluation", "*/eval/minilm/claude-sample.ranks.parquet", f"{SAMPLE}/eval/minilm/claude-sample.metrics.parquet"),
]


def test_sigkill_in_embedding_index_and_evaluation_then_rerun_incomplete(reference, tmp_path):
    workdir = configure(tmp_path / "killed")
    finished: dict[str, int] = {}
    for index, (stage, pattern, output) in enumerate(KILL_POINTS):
        run, paused_at = run_until_paused(workdir, pattern, *(["--rerun-incomplete"] if index else []), str(workdir / output))
        kill(run)
        assert not (workdir / output).exists(), f"{stage}: a partial output is under its final name"
        before = finished_files(workdir)
        for path, stamp in finished.items():  # the jobs finished before earlier kills were not run again
            assert before.get(path) == stamp, f"{stage}: {path} was recomputed or lost"
        finished = before
        # what a user does after a crash: release Snakemake's stale lock, rerun the incomplete jobs (a plain
        # rerun refuses, naming one of the two: --rerun-incomplete when a killed job left a file, else --unlock)
        refused = snakemake(workdir, "--cores", "2", str(workdir / output), check=False)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0 and ("--unlock" in said or "--rerun-incomplete" in said)
        snakemake(workdir, "--unlock")
    snakemake(workdir, "--cores", "2", "--rerun-incomplete", *targets(workdir))
    after = finished_files(workdir)
    assert all(after.get(path) == stamp for path, stamp in finished.items()), "a finished output was recomputed"
    assert not no_temporaries(workdir)
    assert_same_outputs(workdir, reference)


def test_a_full_disk_in_a_job_leaves_nothing_snakemake_accepts(reference, tmp_path):
    workdir = configure(tmp_path / "full")
    env = fault_env(TRSLLAVA_TEST_FSIZE_SCRIPT="embed_texts", TRSLLAVA_TEST_FSIZE_LIMIT="65536")
    failed = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", "--keep-going", *targets(workdir)],
                            capture_output=True, text=True, env=env)
    said = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "not written, any earlier version is kept" in said and "Error in rule embed_references" in said
    embeddings = workdir / SAMPLE / "embeddings" / "minilm"
    assert not (embeddings / "references").exists() and not (embeddings / "captions" / "claude-sample").exists()
    assert not no_temporaries(workdir)
    plan = snakemake(workdir, "-n", *targets(workdir), "--quiet", "rules").stdout
    assert "embed_references" in plan and "embed_captions" in plan
    snakemake(workdir, "--cores", "2", *targets(workdir))
    assert_same_outputs(workdir, reference)


def test_two_runs_on_one_results_folder(tmp_path):
    shared = tmp_path / "shared-results"
    first = configure(tmp_path / "first", shared, encoders=("bm25",))
    second = configure(tmp_path / "second", shared, encoders=("bm25",))
    target = str(shared / "ablation.csv")
    run, _ = run_until_paused(first, "*/embeddings/bm25/.references.tmp-*/texts.parquet", target)
    try:
        refused = snakemake(second, "--cores", "2", target, check=False)
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0
        line = next(line for line in output.splitlines() if line.startswith("trsllava: results directory"))
        assert str(shared) in line and f"working directory {first}" in line and f"pid {run.pid}" in line
        assert not (shared / "ablation.csv").exists()
        same_folder = snakemake(first, "--cores", "2", target, check=False)  # Snakemake's own lock
        assert same_folder.returncode != 0 and "cannot be locked" in same_folder.stdout + same_folder.stderr
    finally:
        kill(run)
    # the killed run's lock on the results folder is gone with it: the second run goes ahead
    snakemake(second, "--cores", "2", target)
    assert (shared / "ablation.csv").is_file()
    holder = json.loads((shared / ".trsllava.lock").read_text())
    assert holder["workdir"] == str(second) and holder["pid"] != run.pid


# -- full disk, unit level: the atomic writers --------------------------------------------------------

def _fill_disk_halfway(monkeypatch, method_owner, name):
    """Make ``method_owner.name`` write half of its output, then fail with ENOSPC."""
    original = getattr(method_owner, name)

    def half_then_enospc(self, target, *args, **kwargs):
        original(self, target, *args, **kwargs)
        data = Path(target).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(method_owner, name, half_then_enospc)


def test_enospc_mid_write_keeps_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    from trsllava import atomic

    old = pl.DataFrame({"x": [1, 2, 3]})
    atomic.write_parquet(old, tmp_path / "table.parquet")
    _fill_disk_halfway(monkeypatch, pl.DataFrame, "write_parquet")
    with pytest.raises(OSError) as error:
        atomic.write_parquet(pl.DataFrame({"x": list(range(1000))}), tmp_path / "table.parquet")
    assert error.value.errno == errno.ENOSPC
    assert pl.read_parquet(tmp_path / "table.parquet").equals(old)  # the old output, whole
    with pytest.raises(OSError):
        atomic.write_parquet(pl.DataFrame({"x": [1]}), tmp_path / "new.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]  # no partial file, no temporary


def test_enospc_in_a_directory_output_leaves_no_folder(tmp_path, monkeypatch):
    from trsllava import steps
    from trsllava.atomic import atomic_directory

    texts = tmp_path / "captions.parquet"
    pl.DataFrame({"text": ["a harbour", "a field", "a road"]}).write_parquet(texts)
    config = {"encoders": {"bm25": {"type": "bm25"}}}
    out = tmp_path / "embeddings" / "bm25"
    steps.embed_texts(config, "bm25", texts, out)
    whole = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert "texts.parquet" in whole and any(name.startswith("bm25/") for name in whole)

    # the disk fills up at the last file of the folder (texts.parquet, after the BM25 index)
    _fill_disk_halfway(monkeypatch, pl.DataFrame, "write_parquet")
    with pytest.raises(OSError):
        steps.embed_texts(config, "bm25", texts, tmp_path / "embeddings" / "again")
    assert sorted(p.name for p in (tmp_path / "embeddings").iterdir()) == ["bm25"]  # no partial folder or temporary
    with pytest.raises(OSError):  # over an existing output: the old folder is replaced only when whole
        steps.embed_texts(config, "bm25", texts, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == whole
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "x") as building:
        (building / "part").write_text("half")
        raise RuntimeError("killed")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    from trsllava import atomic

    (tmp_path / ".table.parquet.abc123.tmp").write_bytes(b"half a file")
    (tmp_path / ".index.tmp-xyz").mkdir()
    (tmp_path / ".index.tmp-xyz" / "index.faiss").write_bytes(b"half")
    atomic.write_parquet(pl.DataFrame({"x": [1]}), tmp_path / "table.parquet")
    with atomic.atomic_directory(tmp_path / "index") as building:
        (building / "index.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "table.parquet"]


def test_real_file_size_limit_mid_write(tmp_path):
    """The kernel refuses a write half-way (RLIMIT_FSIZE): every atomic writer leaves the old output."""
    code = f"""
import resource, signal, sys
import numpy as np, polars as pl
sys.path.insert(0, {str(ROOT / 'src')!r})
from trsllava import atomic
out = {str(tmp_path)!r}
atomic.write_npy(np.zeros(10, np.float32), out + "/vectors.npy")
atomic.write_parquet(pl.DataFrame({{"x": [1]}}), out + "/table.parquet")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))
failed = 0
for write in (lambda: atomic.write_npy(np.random.rand(100000).astype(np.float32), out + "/vectors.npy"),
              lambda: atomic.write_parquet(pl.DataFrame({{"x": np.random.rand(100000)}}), out + "/table.parquet"),
              lambda: atomic.write_text("x" * 100000, out + "/notes.txt")):
    try:
        write()
    except Exception:
        failed += 1
print(failed)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet", "vectors.npy"]
    assert np.array_equal(np.load(tmp_path / "vectors.npy"), np.zeros(10, np.float32))
    assert pl.read_parquet(tmp_path / "table.parquet").equals(pl.DataFrame({"x": [1]}))


def test_atomic_outputs_get_the_mode_of_a_plain_write(tmp_path):
    """tempfile makes files 0600 and folders 0700; an output must be as readable as open() and
    mkdir() would have made it under the user's umask (here 022: 0644 and 0755)."""
    from trsllava.atomic import atomic_directory, atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "table.parquet") as tmp:
            tmp.write_text("x")
        with atomic_directory(tmp_path / "embeddings") as folder:
            (folder / "vectors.npy").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "table.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "embeddings").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "embeddings" / "vectors.npy").stat().st_mode & 0o777 == 0o644
