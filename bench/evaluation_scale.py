"""Evaluation time and peak memory: the package's blocked Protocol vs a plain per-query loop.

Scenarios (queries are always RSICD's test split):
  A  the test split as gallery: 5,465 text-to-image queries over 1,093 images and 1,093
     image-to-text queries over 5,465 captions;
  B  the whole archive as gallery (DatasetSpec gallery="all"): the same queries over 10,921 images
     and 54,605 captions.
The database texts are a STAND-IN (each image's own 5 human captions; there is no VLM caption set
for RSICD here): the numbers are about speed and memory, not accuracy.

Methods:
  protocol  trsllava.evaluation.protocol.Protocol, max aggregation, blocked to Settings.memory_mb
  baseline  a naive loop written here: per query one numpy dot against every caption-row embedding
            (not deduplicated), a numpy max per image, tie counts as metrics.py defines them.
Both must give identical (above, tied_other, tied_relevant) for every query (checked).

Every measurement runs in a fresh subprocess. Its peak memory is ru_maxrss at the end minus the RSS
after loading the data; the kernel's high-water mark is reset after loading (/proc/self/clear_refs),
and this driver keeps itself small, because a child's ru_maxrss starts at its launcher's peak.

Run: python bench/evaluation_scale.py [--baseline-queries 500,100 | all] [--budgets 512,64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

NAME = "evaluation_scale"
TOLERANCE = 1e-6  # Settings().tie_tolerance; checked against the package in the worker


# ==================================================================================================
# worker side (runs in its own process; imports numpy/polars/the package only here)
# ==================================================================================================
def cache_folder(annotations: Path) -> Path:
    import hashlib

    from trsllava.encoders.weights import ALIASES

    digest = hashlib.sha256(annotations.read_bytes()).hexdigest()[:12]
    return (
        _common.BENCH_CACHE / f"rsicd-{digest}-minilm-{ALIASES['minilm']['sha256'][:8]}"
    )


def worker_prepare(options: dict) -> dict:
    """Tables of both galleries as parquet, and MiniLM vectors of every unique RSICD text (cached)."""
    import numpy as np
    import polars as pl

    from trsllava.datasets.load import load_dataset

    annotations = Path(options["annotations"])
    folder = cache_folder(annotations)
    folder.mkdir(parents=True, exist_ok=True)
    for scenario, gallery in (("A", "split"), ("B", "all")):
        if not (folder / f"references_{scenario}.parquet").is_file():
            images, references = load_dataset(
                _common.rsicd_spec(gallery, annotations, options["split"])
            )
            images.write_parquet(folder / f"images_{scenario}.parquet")
            references.write_parquet(folder / f"references_{scenario}.parquet")
    vectors_path = folder / "embeddings.npy"
    if vectors_path.is_file() and (folder / "texts.parquet").is_file():
        return {"cache": str(folder), "encoded_now": False}
    texts, _ = _common.unique_texts(
        pl.read_parquet(folder / "references_B.parquet")["text"].to_list()
    )
    from trsllava.encoders.dense import SentenceTransformerEncoder

    encoder = SentenceTransformerEncoder("minilm", _common.MINILM_ENTRY)
    model = encoder.load_model()
    print(
        f"[prepare] encoding {len(texts)} unique RSICD texts with MiniLM (once; cached in {folder})",
        flush=True,
    )
    start = time.perf_counter()
    vectors = encoder.encode(model, texts, progress=False)
    seconds = time.perf_counter() - start
    pl.DataFrame({"text": texts}).write_parquet(folder / "texts.parquet")
    partial = folder / "embeddings.partial.npy"
    np.save(partial, vectors)
    os.replace(partial, vectors_path)
    return {
        "cache": str(folder),
        "encoded_now": True,
        "encode_s": seconds,
        "n_texts": len(texts),
    }


def worker_measure(options: dict) -> dict:
    import gc

    import numpy as np
    import polars as pl

    from trsllava.encoders.dense import DenseRepresentation
    from trsllava.evaluation.protocol import Settings

    assert Settings().tie_tolerance == TOLERANCE, (
        "the bench's tolerance no longer matches the package default"
    )
    folder = Path(options["cache"])
    scenario = options["scenario"]
    images = pl.read_parquet(folder / f"images_{scenario}.parquet")
    references = pl.read_parquet(folder / f"references_{scenario}.parquet")
    all_texts = pl.read_parquet(folder / "texts.parquet")["text"].to_list()
    all_vectors = np.load(folder / "embeddings.npy")
    position = {text: i for i, text in enumerate(all_texts)}

    # the scenario's own unique texts (as the package's caches would hold them)
    texts, _ = _common.unique_texts(references["text"].to_list())
    vectors = np.ascontiguousarray(all_vectors[[position[t] for t in texts]])
    del all_vectors, all_texts, position
    captions = _common.stand_in_captions(references)
    rep = DenseRepresentation(
        texts, vectors
    )  # stand-in: database texts == reference texts
    gc.collect()

    loaded_rss = _common.rss_mb()
    reset = _common.reset_peak()
    loaded_maxrss = _common.maxrss_mb()
    if options["method"] == "protocol":
        timings, counts, info = run_protocol(
            images,
            references,
            captions,
            rep,
            options["split"],
            float(options["memory_mb"]),
        )
    else:
        timings, counts, info = run_baseline(
            images,
            references,
            captions,
            rep,
            options["split"],
            options["t2i_limit"],
            options["i2t_limit"],
        )
    peak_maxrss = _common.maxrss_mb()
    peak_hwm = _common.hwm_mb()
    Path(options["counts"]).write_text(json.dumps(counts))
    return {
        **timings,
        **info,
        "rss_after_load_mb": loaded_rss,
        "maxrss_after_load_mb": loaded_maxrss,
        "peak_reset": reset,
        "maxrss_end_mb": peak_maxrss,
        "vmhwm_end_mb": peak_hwm,
        "peak_delta_mb": peak_maxrss - loaded_rss,
        "n_images": images.height,
        "n_captions": references.height,
        "n_unique_texts": len(texts),
    }


def run_protocol(images, references, captions, rep, split, memory_mb):
    from trsllava.evaluation.caption_sets import caption_set_views
    from trsllava.evaluation.protocol import Protocol, Settings

    settings = Settings(aggregations=("max",), progress=False, memory_mb=memory_mb)
    start = time.perf_counter()
    protocol = Protocol(images, references, split, rep, rep, settings)
    views = [protocol.view(label, rows) for label, rows in caption_set_views(captions)]
    built = time.perf_counter()
    t2i = protocol.text_to_image(views)
    t2i_done = time.perf_counter()
    i2t = protocol.image_to_text(views)
    done = time.perf_counter()
    counts = {
        direction: {
            "ids": frame["query"].to_list(),
            "counts": frame.select("above", "tied_other", "tied_relevant").rows(),
        }
        for direction, frame in (("t2i", t2i), ("i2t", i2t))
    }
    timings = {
        "setup_s": built - start,
        "t2i_s": t2i_done - built,
        "i2t_s": done - t2i_done,
        "total_s": done - start,
        "t2i_queries_timed": t2i.height,
        "i2t_queries_timed": i2t.height,
    }
    info = {
        "memory_mb": memory_mb,
        "views": [v.label for v in views],
        "caption_rows": int(sum(len(v.gen_idx) for v in views)),
    }
    return timings, counts, info


def run_baseline(images, references, captions, rep, split, t2i_limit, i2t_limit):
    """The naive reference: one query at a time against every caption row, nothing deduplicated."""
    import numpy as np

    start = time.perf_counter()
    image_ids = images["image_id"].to_list()
    image_of = {image_id: i for i, image_id in enumerate(image_ids)}
    text_row = {text: i for i, text in enumerate(rep.texts)}
    # database rows grouped by image (the stand-in caption table), one embedding per row
    rows = captions.select("image_id", "text")
    row_image = np.array(
        [image_of[i] for i in rows["image_id"].to_list()], dtype=np.int64
    )
    order = np.argsort(row_image, kind="stable")
    row_image = row_image[order]
    database = np.ascontiguousarray(
        rep.vectors[[text_row[t] for t in rows["text"].to_list()]][order]
    )
    starts = np.flatnonzero(np.r_[True, row_image[1:] != row_image[:-1]])
    owners = row_image[starts]
    # every human caption of the gallery, one embedding per caption
    ref_image = np.array(
        [image_of[i] for i in references["image_id"].to_list()], dtype=np.int64
    )
    ref_vectors = np.ascontiguousarray(
        rep.vectors[[text_row[t] for t in references["text"].to_list()]]
    )
    caption_ids = references["caption_id"].to_list()
    split_of = images["split"].to_list()
    query_images = [i for i in range(len(image_ids)) if split_of[i] == split]
    t2i_queries = [q for q in range(len(ref_image)) if split_of[ref_image[q]] == split]
    t2i_pick = _subset(len(t2i_queries), t2i_limit)
    i2t_pick = _subset(len(query_images), i2t_limit)
    built = time.perf_counter()

    t2i_ids, t2i_counts = [], []
    for k in t2i_pick:
        q = t2i_queries[k]
        row_scores = (database @ ref_vectors[q]).astype(np.float64)
        scores = np.full(len(image_ids), -np.inf)
        scores[owners] = np.maximum.reduceat(row_scores, starts)  # max per image
        relevant = np.zeros(len(image_ids), dtype=bool)
        relevant[ref_image[q]] = True
        t2i_ids.append(str(caption_ids[q]))
        t2i_counts.append(_counts(scores, relevant))
    t2i_done = time.perf_counter()

    i2t_ids, i2t_counts = [], []
    for k in i2t_pick:
        image = query_images[k]
        own = database[row_image == image]
        scores = (
            (own @ ref_vectors.T).max(axis=0).astype(np.float64)
            if len(own)
            else np.full(len(ref_image), -np.inf)
        )
        i2t_ids.append(image_ids[image])
        i2t_counts.append(_counts(scores, ref_image == image))
    done = time.perf_counter()

    timings = {
        "setup_s": built - start,
        "t2i_s": t2i_done - built,
        "i2t_s": done - t2i_done,
        "total_s": done - start,
        "t2i_queries_timed": len(t2i_pick),
        "i2t_queries_timed": len(i2t_pick),
        "t2i_queries_total": len(t2i_queries),
        "i2t_queries_total": len(query_images),
    }
    counts = {
        "t2i": {"ids": t2i_ids, "counts": t2i_counts},
        "i2t": {"ids": i2t_ids, "counts": i2t_counts},
    }
    info = {
        "database_rows": len(database),
        "database_mb": database.nbytes / 2**20,
        "reference_mb": ref_vectors.nbytes / 2**20,
    }
    return timings, counts, info


def _subset(total: int, limit: int) -> list[int]:
    """All indices, or ``limit`` of them spread evenly over the range (deterministic)."""
    if limit <= 0 or limit >= total:
        return list(range(total))
    step = total / limit
    return [int(i * step) for i in range(limit)]


def _counts(scores, relevant) -> list[int]:
    """(above, tied_other, tied_relevant) around the best relevant score, as metrics.py defines them."""
    best = scores[relevant].max()
    above = scores > best + TOLERANCE
    tied = (scores >= best - TOLERANCE) & ~above
    return [
        int(above.sum()),
        int((tied & ~relevant).sum()),
        int((tied & relevant).sum()),
    ]


# ==================================================================================================
# driver side (stdlib only, so that the children's ru_maxrss is not inflated by this process)
# ==================================================================================================
def spawn(kind: str, options: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            kind,
            "--options",
            json.dumps(options),
            "--result",
            str(result),
        ]
        completed = subprocess.run(
            command,
            check=False,
            timeout=timeout,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if completed.returncode != 0 or not result.is_file():
            raise SystemExit(
                f"worker {kind} {options.get('scenario', '')} {options.get('method', '')} failed "
                f"(exit {completed.returncode})"
            )
        return json.loads(result.read_text())


def compare(protocol_counts: dict, baseline_counts: dict) -> dict:
    """Every query the baseline ran must have exactly the protocol's counts."""
    out = {}
    for direction in ("t2i", "i2t"):
        reference = dict(
            zip(
                protocol_counts[direction]["ids"],
                map(tuple, protocol_counts[direction]["counts"]),
            )
        )
        checked, mismatches = 0, []
        for query, counts in zip(
            baseline_counts[direction]["ids"], baseline_counts[direction]["counts"]
        ):
            checked += 1
            if reference.get(query) != tuple(counts):
                mismatches.append((query, reference.get(query), tuple(counts)))
        out[direction] = {
            "checked": checked,
            "mismatches": len(mismatches),
            "examples": mismatches[:5],
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        default=_common.RSICD_JSON,
        help="RSICD Karpathy JSON",
    )
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--scenarios",
        default="A,B",
        help="A (test split gallery), B (whole archive), or both",
    )
    parser.add_argument(
        "--budgets",
        default="512,64",
        help="Settings.memory_mb values run on scenario B (A runs the first)",
    )
    parser.add_argument(
        "--baseline-queries",
        default="500,100",
        help="T2I,I2T queries the baseline times on scenario B (extrapolated linearly), or 'all'",
    )
    parser.add_argument(
        "--baseline-queries-a",
        default="all",
        help="the same for scenario A (default: every query)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds of every measurement (fresh subprocess each); the fastest run is reported",
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds allowed per measurement"
    )
    parser.add_argument(
        "--out", type=Path, default=_common.RESULTS_DIR / f"{NAME}.json"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        options = json.loads(args.options)
        result = {"prepare": worker_prepare, "measure": worker_measure}[args.worker](
            options
        )
        Path(args.result).write_text(json.dumps(result, default=_common._plain))
        return 0

    def limits(text: str) -> tuple[int, int]:
        if text == "all":
            return 0, 0
        t2i, _, i2t = text.partition(",")
        return int(t2i), int(i2t or 0)

    budgets = [float(b) for b in args.budgets.split(",") if b]
    scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    print(_common.STAND_IN_NOTE)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; every measurement in a fresh subprocess\n"
    )
    started = time.perf_counter()
    prepared = spawn(
        "prepare",
        {"annotations": str(args.annotations), "split": args.split},
        args.timeout,
    )
    if prepared.get("encoded_now"):
        print(
            f"encoded {prepared['n_texts']} unique texts in {prepared['encode_s']:.1f} s (cached for later runs)"
        )
    base = {"cache": prepared["cache"], "split": args.split}

    plan = []  # (label, scenario, options)
    for scenario in scenarios:
        scenario_budgets = budgets if scenario == "B" else budgets[:1]
        for budget in scenario_budgets:
            plan.append(
                (
                    f"protocol {budget:g} MB",
                    scenario,
                    {"method": "protocol", "memory_mb": budget},
                )
            )
        t2i_limit, i2t_limit = limits(
            args.baseline_queries if scenario == "B" else args.baseline_queries_a
        )
        plan.append(
            (
                "baseline",
                scenario,
                {"method": "baseline", "t2i_limit": t2i_limit, "i2t_limit": i2t_limit},
            )
        )

    measured = []  # (best run of each plan entry, its counts as JSON text)
    with tempfile.TemporaryDirectory() as scratch:
        runs: dict[int, list[dict]] = {number: [] for number in range(len(plan))}
        counts_text: dict[int, str] = {}
        for round_ in range(
            args.repeats
        ):  # rounds interleave the methods, so other jobs' load hits all alike
            for number, (label, scenario, extra) in enumerate(plan):
                counts_path = Path(scratch) / f"counts_{number}.json"
                options = {
                    **base,
                    **extra,
                    "scenario": scenario,
                    "counts": str(counts_path),
                }
                load = os.getloadavg()[0]
                result = spawn("measure", options, args.timeout)
                result.update(
                    label=label, scenario=scenario, method=extra["method"], loadavg=load
                )
                print(
                    f"  round {round_ + 1}: {scenario} {label:<16} {result['total_s']:8.2f} s"
                    f"  peak +{result['peak_delta_mb']:.0f} MB  (load average {load:.2f})",
                    flush=True,
                )
                runs[number].append(result)
                counts_text.setdefault(number, counts_path.read_text())
        for number in range(len(plan)):
            best = dict(min(runs[number], key=lambda r: r["total_s"]))
            best["runs_total_s"] = [r["total_s"] for r in runs[number]]
            best["runs_peak_delta_mb"] = [r["peak_delta_mb"] for r in runs[number]]
            measured.append((best, counts_text[number]))
        # checks: the baseline's counts against the protocol's, per scenario (every budget)
        checks = {}
        for result, counts in measured:
            if result["method"] != "baseline":
                continue
            baseline_counts = json.loads(counts)
            for other, other_text in measured:
                if (
                    other["scenario"] == result["scenario"]
                    and other["method"] == "protocol"
                ):
                    checks[f"{result['scenario']} {other['label']}"] = compare(
                        json.loads(other_text), baseline_counts
                    )
    results = [r for r, _ in measured]
    report(results, checks)
    ok = all(c[d]["mismatches"] == 0 for c in checks.values() for d in c)
    _common.write_results(
        NAME,
        {
            "args": {
                k: str(v)
                for k, v in vars(args).items()
                if k not in ("worker", "options", "result")
            },
            "note": _common.STAND_IN_NOTE,
            "prepare": prepared,
            "measurements": results,
            "checks": checks,
            "identical_counts": ok,
            "driver_maxrss_mb": _common.maxrss_mb(),
            "elapsed_s": time.perf_counter() - started,
        },
        args.out,
    )
    print(f"\nresults: {args.out}   (elapsed {time.perf_counter() - started:.0f} s)")
    assert ok, (
        "the protocol and the naive baseline disagree on some query's tie counts (see checks above)"
    )
    return 0


def report(results: list[dict], checks: dict) -> None:
    def extrapolated(r: dict) -> tuple[float, float, bool]:
        t2i, i2t = r["t2i_s"], r["i2t_s"]
        partial = False
        if r["method"] == "baseline":
            if r["t2i_queries_timed"] < r["t2i_queries_total"]:
                t2i *= r["t2i_queries_total"] / max(r["t2i_queries_timed"], 1)
                partial = True
            if r["i2t_queries_timed"] < r["i2t_queries_total"]:
                i2t *= r["i2t_queries_total"] / max(r["i2t_queries_timed"], 1)
                partial = True
        return t2i, i2t, partial

    print()
    for scenario in sorted({r["scenario"] for r in results}):
        rows_of = [r for r in results if r["scenario"] == scenario]
        first = rows_of[0]
        queries = first.get("t2i_queries_total") or first["t2i_queries_timed"]
        images = first.get("i2t_queries_total") or first["i2t_queries_timed"]
        dense_gb = (max(queries, 1) * first["n_captions"] * 8) / 2**30
        print(
            f"Scenario {scenario}: gallery {first['n_images']} images / {first['n_captions']} captions "
            f"({first['n_unique_texts']} distinct texts); queries: t2i {queries}, i2t {images}"
        )
        print(
            f"  a dense t2i queries x caption-rows float64 matrix would be {dense_gb:.2f} GiB "
            f"({dense_gb / 2:.2f} GiB as float32)"
        )
        table_rows = []
        baseline = next((r for r in rows_of if r["method"] == "baseline"), None)
        base_total = None
        if baseline:
            bt2i, bi2t, _ = extrapolated(baseline)
            base_total = baseline["setup_s"] + bt2i + bi2t
        for r in rows_of:
            t2i, i2t, partial = extrapolated(r)
            total = r["setup_s"] + t2i + i2t
            mark = "*" if partial else ""
            speedup = (
                f"x{base_total / total:.1f}"
                if base_total and r["method"] == "protocol"
                else "-"
            )
            table_rows.append(
                [
                    r["label"],
                    f"{r['setup_s']:.2f}",
                    f"{t2i:.2f}{mark}",
                    f"{i2t:.2f}{mark}",
                    f"{total:.2f}{mark}",
                    speedup,
                    f"{r['rss_after_load_mb']:.0f}",
                    f"{r['peak_delta_mb']:.0f}",
                    f"{r['vmhwm_end_mb'] - r['rss_after_load_mb']:.0f}",
                ]
            )
        print(
            _common.table(
                [
                    "method",
                    "setup s",
                    "t2i s",
                    "i2t s",
                    "total s",
                    "speed-up",
                    "RSS loaded MB",
                    "peak +MB",
                    "(VmHWM +MB)",
                ],
                table_rows,
            )
        )
        if baseline and (
            baseline["t2i_queries_timed"] < baseline["t2i_queries_total"]
            or baseline["i2t_queries_timed"] < baseline["i2t_queries_total"]
        ):
            print(
                f"  * baseline timed on {baseline['t2i_queries_timed']} of {baseline['t2i_queries_total']} t2i and "
                f"{baseline['i2t_queries_timed']} of {baseline['i2t_queries_total']} i2t queries (evenly spaced) and "
                f"EXTRAPOLATED linearly to all queries; measured: t2i {baseline['t2i_s']:.2f} s, i2t {baseline['i2t_s']:.2f} s"
            )
        for r in rows_of:
            if r["method"] == "protocol":
                print(
                    f"  protocol memory_mb={r['memory_mb']:g}: measured peak +{r['peak_delta_mb']:.0f} MB over the loaded data "
                    f"({r['peak_delta_mb'] / r['memory_mb']:.2f} x the budget)"
                )
        for key, check in checks.items():
            if key.startswith(scenario + " "):
                parts = ", ".join(
                    f"{d} {c['checked']} queries, {c['mismatches']} mismatches"
                    for d, c in check.items()
                )
                print(f"  identical counts, baseline vs {key[2:]}: {parts}")
                for d, c in check.items():
                    for example in c["examples"]:
                        print(
                            f"    {d} mismatch: query {example[0]} protocol {example[1]} baseline {example[2]}"
                        )
        print()
    print(
        "times: the fastest of the rounds; peak +MB: ru_maxrss at the end minus the RSS after loading the data"
        " (kernel peak reset after loading), of that run; VmHWM +MB: the same from /proc/self/status."
    )


if __name__ == "__main__":
    sys.exit(main())
