"""What the per-text embedding cache saves, against re-encoding without it, in the same run.

RSICD's human captions as two text tables that share texts, as two datasets of one experiment would:
`test` (the first --test-images images of the test split, default 400; 0: all 1,093, 3,331 distinct
texts) and `all` (a gallery holding those and --other-images more of the other splits, default 400;
0: every split), so every `test` text is also in `all`. MiniLM (all-MiniLM-L6-v2, CPU, batch 64), model
loaded once beforehand; each step is what the workflow's jobs do for one table.

  baseline (no cache)    each table's distinct texts encoded (what `embed_texts` did before the cache)
  cache, cold            fill_cache (hash, look up, encode the missing in batches of 1024, one cache
                         chunk each) + write_representation (memory-mapped matrix from the cache)
  cache, shared          the `test` table after `all`: nothing left to encode
  cache, rerun           both tables again: lookups and the merge only (the model is not even needed)
  archive scale          a cache of N texts (RSICD's texts made distinct with a suffix, vectors the real
                         MiniLM vectors repeated: a storage measurement) looked up and merged whole, vs
                         encoding N texts at the rate measured here

Ratios are baseline time / cache time (higher is better), fastest of --repeats interleaved rounds
for the steps that encode; CPU seconds are given beside wall seconds because other jobs share the
machine.

Run: python bench/embedding_cache.py [--test-images 0 --other-images 1093] [--archive-texts 1000000]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import _common  # first: sets HF_HUB_OFFLINE before transformers is imported
import numpy as np
import polars as pl

from trsllava.datasets.load import load_dataset
from trsllava.encoders.cache import EmbeddingCache, text_keys
from trsllava.encoders.dense import DenseRepresentation, SentenceTransformerEncoder
from trsllava.encoders.store import fill_cache, write_representation

NAME = "embedding_cache"


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def through_cache(encoder, texts, root, out, batch_size):
    """One table through the workflow's path: fill the cache (shard job), assemble (merge job)."""
    report = fill_cache(encoder, texts, root, batch_size=batch_size, progress=False)
    write_representation(encoder.name, texts, report["roles"], root, out, encoder.describe())
    return sum(stats["encoded"] for stats in report["caches"].values())


def archive_scale(n: int, texts: list[str], vectors: np.ndarray, fingerprint: dict, root: Path, batch_size: int) -> dict:
    """A cache of n distinct texts in chunks of batch_size, then one table of all n merged from it."""
    cache = EmbeddingCache(root, "sentence-transformers", fingerprint)
    archive = [f"{texts[i % len(texts)]} #{i}" for i in range(n)]
    with Timer() as hashing:
        keys = text_keys(archive)
    with Timer() as writing:
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(n, start + batch_size))
            cache.add(keys[rows], vectors[rows % len(vectors)])
    with Timer() as lookup:
        found = cache.lookup(keys)
    assert found.found.all()
    out = root / "archive-representation"
    with Timer() as merge:
        write_representation("minilm", archive, {"query": fingerprint, "document": fingerprint}, root, out,
                             {"type": "sentence-transformers"})
    merged = DenseRepresentation.load(out)
    probe = np.random.default_rng(0).integers(0, n, 1000)
    assert np.array_equal(np.asarray(merged.vectors[probe]), vectors[probe % len(vectors)])
    size = sum(p.stat().st_size for p in cache.chunks_dir.iterdir())
    return {"texts": n, "chunks": len(cache.chunk_files()), "cache_bytes": size, "hash_s": hashing.wall,
            "write_chunks_s": writing.wall, "lookup_s": lookup.wall, "merge_s": merge.wall, "merge_cpu_s": merge.cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=Path, default=_common.RSICD_JSON)
    parser.add_argument("--test-images", type=int, default=400, help="the first N test images (0: all 1,093)")
    parser.add_argument("--other-images", type=int, default=400,
                        help="images of the other splits in table `all` besides the test images (0: all 9,828)")
    parser.add_argument("--batch-size", type=int, default=64, help="MiniLM batch size")
    parser.add_argument("--cache-batch-size", type=int, default=1024, help="texts per cache chunk (the workflow's default)")
    parser.add_argument("--archive-texts", type=int, default=1_000_000, help="texts of the archive-scale cache (0: skip)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the encoding steps (fastest reported)")
    parser.add_argument("--scratch", type=Path, help="folder for the caches (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR / f"{NAME}.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")

    _, everything = load_dataset(_common.rsicd_spec("all", args.annotations))
    _, test = load_dataset(_common.rsicd_spec("split", args.annotations))
    test_ids = test["image_id"].unique(maintain_order=True).to_list()[: args.test_images or None]
    others = [i for i in everything["image_id"].unique(maintain_order=True).to_list() if i not in set(test_ids)]
    extra = len(others) if args.other_images == 0 else args.other_images
    chosen = set(test_ids) | set(others[:extra])
    tables = {"all": everything.filter(pl.col("image_id").is_in(chosen))["text"].unique(maintain_order=True).to_list(),
              "test": test.filter(pl.col("image_id").is_in(test_ids))["text"].unique(maintain_order=True).to_list()}
    shared = len(set(tables["test"]) & set(tables["all"]))
    print(f"RSICD human captions: table `all` {len(tables['all'])} distinct texts, `test` {len(tables['test'])} "
          f"({shared} of them also in `all`)")

    encoder = SentenceTransformerEncoder("minilm", {**_common.MINILM_ENTRY, "batch_size": args.batch_size})
    encoder.embed(tables["test"][:128], "document")  # loads the model (outside every timing) and warms up

    scratch = Path(tempfile.mkdtemp(prefix="trsllava-bench-", dir=args.scratch))
    try:
        rows, timings, baseline = [], {}, {}

        def best(key, timer):  # fastest of the rounds: other jobs on the machine only ever slow a run down
            if key not in timings or timer.wall < timings[key].wall:
                timings[key] = timer

        encoded = {}
        for round_ in range(args.repeats):  # interleaved, so that load from other jobs hits both alike
            root = scratch / f"cache-{round_}"  # a fresh, empty cache each round
            with Timer() as t:
                baseline["all"] = encoder.embed(tables["all"], "document")  # one call: every text of the table
            best("baseline_all", t)
            with Timer() as t:
                encoded["cold"] = through_cache(encoder, tables["all"], root, scratch / "rep-all", args.cache_batch_size)
            best("cold_all", t)
            with Timer() as t:
                baseline["test"] = encoder.embed(tables["test"], "document")
            best("baseline_test", t)
        with Timer() as t:
            encoded["shared"] = through_cache(encoder, tables["test"], root, scratch / "rep-test", args.cache_batch_size)
        best("shared_test", t)
        with Timer() as t:
            encoded["rerun"] = sum(through_cache(encoder, tables[n], root, scratch / f"rep-{n}", args.cache_batch_size)
                                   for n in ("all", "test"))
        best("rerun", t)
        for name in ("all", "test"):
            vectors = DenseRepresentation.load(scratch / f"rep-{name}").vectors
            difference = float(np.abs(np.asarray(vectors) - baseline[name]).max())
            assert difference < 1e-5, f"cached vectors of `{name}` differ from a direct encoding by {difference}"
            print(f"`{name}`: cached vectors equal a direct encoding to {difference:.1e}")

        def add(label, texts_encoded, base_keys, cache_key):
            base = sum(timings[k].wall for k in base_keys)
            base_cpu = sum(timings[k].cpu for k in base_keys)
            cached = timings[cache_key]
            rows.append([label, f"{sum(len(tables[k.split('_')[1]]) for k in base_keys):,}", f"{base:.1f} ({base_cpu:.1f})",
                         f"{texts_encoded:,}", f"{cached.wall:.2f} ({cached.cpu:.2f})", f"x{base / cached.wall:.2f}",
                         f"x{base_cpu / max(cached.cpu, 1e-9):.2f}"])
            return {"baseline_encoded": sum(len(tables[k.split('_')[1]]) for k in base_keys), "baseline_s": base,
                    "baseline_cpu_s": base_cpu, "cache_encoded": texts_encoded, "cache_s": cached.wall, "cache_cpu_s": cached.cpu,
                    "ratio_wall": base / cached.wall, "ratio_cpu": base_cpu / max(cached.cpu, 1e-9)}

        results = {
            "cold `all` (the cache's own cost)": add("cold `all` (the cache's own cost)", encoded["cold"], ["baseline_all"], "cold_all"),
            "`test` after `all` (shared texts)": add("`test` after `all` (shared texts)", encoded["shared"], ["baseline_test"], "shared_test"),
            "rerun of both tables": add("rerun of both tables", encoded["rerun"], ["baseline_all", "baseline_test"], "rerun"),
        }
        # the experiment as a whole: both tables embedded once each, then a rerun
        total_base = 2 * sum(timings[k].wall for k in ("baseline_all", "baseline_test"))
        total_cache = sum(timings[k].wall for k in ("cold_all", "shared_test", "rerun"))
        print()
        print(_common.table(["step", "texts encoded", "no cache: s (cpu s)", "texts encoded", "cache: s (cpu s)",
                             "ratio wall", "ratio cpu"], rows))
        print(f"\nboth tables, then a rerun of both: no cache {total_base:.1f} s, cache {total_cache:.1f} s: x{total_base / total_cache:.2f}")
        rate = len(tables["all"]) / timings["baseline_all"].wall
        payload = {"tables": {k: len(v) for k, v in tables.items()}, "shared_texts": shared,
                   "minilm_texts_per_s": rate, "steps": results, "total": {"baseline_s": total_base, "cache_s": total_cache,
                                                                           "ratio": total_base / total_cache},
                   "torch_threads": torch.get_num_threads(), "cache_batch_size": args.cache_batch_size, "repeats": args.repeats,
                   "load_average_end": os.getloadavg()[0]}

        if args.archive_texts:
            vectors = np.asarray(DenseRepresentation.load(scratch / "rep-all").vectors)
            scale = archive_scale(args.archive_texts, tables["all"], vectors, encoder.fingerprint("document"),
                                  scratch / "archive", args.cache_batch_size)
            encode_s = args.archive_texts / rate
            merge_total = scale["hash_s"] + scale["lookup_s"] + scale["merge_s"]
            print(f"\narchive scale: {scale['texts']:,} texts in {scale['chunks']:,} chunks ({scale['cache_bytes'] / 2**30:.2f} GiB); "
                  f"hashing {scale['hash_s']:.1f} s, lookup {scale['lookup_s']:.1f} s, merge into the memory-mapped matrix "
                  f"{scale['merge_s']:.1f} s (lookup included)")
            print(f"  a rerun of a {scale['texts']:,}-text table: {merge_total:.1f} s from the cache vs {encode_s:,.0f} s to encode "
                  f"at the {rate:.0f} texts/s measured above: x{encode_s / merge_total:,.0f}")
            payload["archive_scale"] = {**scale, "encode_estimate_s": encode_s, "ratio": encode_s / merge_total}
        path = _common.write_results(NAME, payload, args.out)
        print(f"\nwritten {path}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
