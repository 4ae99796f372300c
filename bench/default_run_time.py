"""Wall time of the offline default run on the built-in sample: the shipped config against the same
config without this release's retrieval additions (no hubness-aware scoring, no joined caption
sets, no caption-set fusions), i.e. the default run as it was before them.

Each variant runs `snakemake --cores 2` from scratch in a fresh directory (every embedding, the query
bank included, is computed again), `--repeats` rounds interleaved; the fastest run of each is
reported, with the ratio. The shipped default may be at most 2x the old one (issue 11).

    python bench/default_run_time.py                      # config.offline.yaml, 3 rounds
    python bench/default_run_time.py --config my.yaml --repeats 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import write_results

ROOT = Path(__file__).resolve().parents[1]


def variants(config: dict) -> dict[str, dict]:
    before = dict(config)
    before.pop("normalization", None)
    before["caption_sets"] = {"joined": False, "fusions": {}}
    return {"before (no normalization, no joined/fused caption sets)": before, "shipped": config}


def run_once(config: dict, workdir: Path) -> float:
    config = {**config, "results": str(workdir / "results")}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", "--configfile", str(workdir / "config.yaml"), "--replace-workflow-config", "--quiet"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed in {workdir}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config.offline.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    config["baselines"] = {"clip": {"models": {}}, "oracle": (config.get("baselines") or {}).get("oracle", False)}
    runs: dict[str, list[float]] = {name: [] for name in variants(config)}
    for round_ in range(args.repeats):
        for name, variant in variants(config).items():
            with tempfile.TemporaryDirectory(prefix="trsllava-bench-") as scratch:
                seconds = run_once(variant, Path(scratch))
            runs[name].append(seconds)
            print(f"round {round_ + 1}: {name}: {seconds:.1f} s", flush=True)
    best = {name: min(times) for name, times in runs.items()}
    (before, shipped) = best.values()
    print(f"\n{'variant':58} best s  runs")
    for name, times in runs.items():
        print(f"{name:58} {best[name]:6.1f}  {', '.join(f'{t:.1f}' for t in times)}")
    print(f"shipped / before: x{shipped / before:.2f} (limit x2.00)")
    path = write_results("default_run_time", {"config": str(args.config), "runs_s": runs, "best_s": best,
                                              "ratio": shipped / before}, args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
