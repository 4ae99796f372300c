"""Sharded embedding through Snakemake, as a user meets it: a run killed mid-shard (SIGKILL to the
process group, as an OOM killer or a lost node would) and resumed re-encodes no finished batch and
gives the representation an uninterrupted run gives; a second dataset holding the same texts embeds
nothing; settings that leave the vectors alone rerun nothing, and a new shard count encodes nothing.

One scenario (module fixture) serves every test: each shard job that encodes loads torch and
MiniLM, the slow part on a small machine."""

import json
import math
import os
import signal
import subprocess
import time

import numpy as np
import polars as pl
import pytest
import yaml

from test_workflow import SNAKEMAKE, snakemake, write_config
from trsllava.encoders import build_encoder
from trsllava.encoders.cache import EmbeddingCache
from trsllava.encoders.dense import DenseRepresentation
from trsllava.encoders.store import shard_texts

CLAUDE = {"backend": "import", "model": "claude (sample caption set)", "files": {"sample": "builtin", "copy": "builtin"}}
BATCH = 2  # texts per cache chunk: many small batches, so that the kill lands between two of them
SHARDS = 2
TEXTS = 420  # distinct texts of the sample's caption set


def minilm(**settings):
    return {"type": "sentence-transformers", "model": "minilm", **settings}


def representation(results, dataset):
    return results / dataset / "embeddings" / "minilm" / "captions" / "claude-sample"


def shard_report(results, dataset, shard, shards=SHARDS):
    path = results / dataset / "embeddings" / "minilm" / "shards" / "captions" / "claude-sample" / f"shard-{shard}-of-{shards}.json"
    return json.loads(path.read_text())


def only_cache(report):
    (stats,) = report["caches"].values()  # MiniLM is symmetric: one cache for both roles
    return stats


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    workdir = write_config(
        tmp_path_factory.mktemp("embedding"),
        datasets={"sample": {"format": "builtin"}, "copy": {"format": "builtin"}},
        captioners={"claude-sample": CLAUDE},
        encoders={"minilm": minilm(shards=SHARDS, cache_batch_size=BATCH)},
        aggregations=["max"],
    )
    results = workdir / "results"
    snakemake(workdir, "--cores", "2", *(str(results / d / "captions" / "claude-sample.parquet") for d in ("sample", "copy")))
    encoder = build_encoder("minilm", minilm())
    cache = EmbeddingCache(results / "cache" / "embeddings", encoder.kind, encoder.fingerprint("query"))

    target = str(representation(results, "sample"))
    run = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "1", target],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    while len(cache.chunk_files()) < 5 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    before = {"stats": cache.stats(), "chunks": {p.name: p.read_bytes() for p in cache.chunks_dir.iterdir()},
              "representation_exists": os.path.exists(target)}

    # what a user does after a crash: release the stale lock, rerun the incomplete job
    snakemake(workdir, "--unlock")
    snakemake(workdir, "--cores", "1", "--rerun-incomplete", target)
    after_resume = cache.stats()
    snakemake(workdir, "--cores", "2", str(representation(results, "copy")))
    return {"workdir": workdir, "results": results, "cache": cache, "encoder": encoder, "before": before,
            "after_resume": after_resume}


def test_kill_landed_mid_embedding(scenario):
    texts = pl.read_parquet(scenario["results"] / "sample" / "captions" / "claude-sample.parquet")["text"].unique().to_list()
    batches = sum(math.ceil(len(shard_texts(texts, i, SHARDS)) / BATCH) for i in range(SHARDS))
    before = scenario["before"]
    assert not before["representation_exists"]
    assert 5 <= before["stats"]["chunks"] < batches, f"the kill should land mid-embedding: {before['stats']} of {batches} batches"
    assert before["stats"]["rows"] == before["stats"]["distinct"] == BATCH * before["stats"]["chunks"]


def test_resume_encoded_only_the_texts_missing_at_the_kill(scenario):
    results, cache, before = scenario["results"], scenario["cache"], scenario["before"]
    assert scenario["after_resume"] == {"chunks": scenario["after_resume"]["chunks"], "rows": TEXTS, "distinct": TEXTS}
    for name, data in before["chunks"].items():  # every batch finished before the kill is kept as it was
        if name.endswith(".npy"):
            assert (cache.chunks_dir / name).read_bytes() == data
    reports = [shard_report(results, "sample", i) for i in range(SHARDS)]
    assert sum(only_cache(r)["cached"] for r in reports) == before["stats"]["rows"]
    assert sum(only_cache(r)["encoded"] for r in reports) == TEXTS - before["stats"]["rows"]
    for i, report in enumerate(reports):
        log = (results / "logs" / "embed_shard" / "sample" / "minilm" / "captions" / "claude-sample" / f"shard-{i}-of-{SHARDS}.log").read_text()
        stats = only_cache(report)
        assert f"{report['texts']} distinct texts, {stats['cached']} cached, {stats['encoded']} to encode" in log


def test_resumed_representation_is_identical_to_an_uninterrupted_one(scenario):
    """Same texts in the same (first-seen) order, and bitwise the same vectors: the resumed shard
    encodes exactly the batches an uninterrupted one would have (the kill falls between batches)."""
    import torch

    results = scenario["results"]
    rep = DenseRepresentation.load(representation(results, "sample"))
    texts = pl.read_parquet(results / "sample" / "captions" / "claude-sample.parquet")["text"].unique(maintain_order=True).to_list()
    assert rep.texts == texts and rep.vectors.shape == (TEXTS, 384) and rep.vectors.dtype == np.float32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the shard jobs of a --cores 1 run
    try:
        expected = {}
        for shard in range(SHARDS):
            part = shard_texts(texts, shard, SHARDS)
            for start in range(0, len(part), BATCH):
                batch = part[start:start + BATCH]
                expected.update(zip(batch, scenario["encoder"].embed(batch, "document")))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(rep.vectors, np.stack([expected[t] for t in texts]))
    described = json.loads((representation(results, "sample") / "encoder.json").read_text())
    assert described["symmetric"] and described["fingerprints"]["query"]["weights"].startswith("sha256:53aa5117")


def test_a_second_dataset_with_the_same_texts_embeds_nothing(scenario):
    results = scenario["results"]
    reports = [shard_report(results, "copy", i) for i in range(SHARDS)]
    assert sum(r["texts"] for r in reports) == TEXTS and all(only_cache(r)["encoded"] == 0 for r in reports)
    assert scenario["cache"].stats()["rows"] == TEXTS
    copy, sample = (DenseRepresentation.load(representation(results, d)) for d in ("copy", "sample"))
    assert copy.texts == sample.texts and np.array_equal(copy.vectors, sample.vectors)


def test_runtime_settings_rerun_nothing_and_new_shards_encode_nothing(scenario):
    workdir, results = scenario["workdir"], scenario["results"]
    target = str(representation(results, "sample"))
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["encoders"]["minilm"].update(batch_size=8, threads=1, mem_mb=3000, gpus=0, cache_batch_size=16)
    edited = workdir / "runtime.yaml"
    edited.write_text(yaml.safe_dump(config))
    assert "Nothing to be done" in snakemake(workdir, "-n", target, "--configfile", str(edited)).stdout

    config["encoders"]["minilm"]["shards"] = 3
    edited.write_text(yaml.safe_dump(config))
    before = np.array(DenseRepresentation.load(target).vectors)
    snakemake(workdir, "--cores", "2", target, "--configfile", str(edited))
    reports = [shard_report(results, "sample", i, 3) for i in range(3)]
    assert sum(r["texts"] for r in reports) == TEXTS and all(only_cache(r)["encoded"] == 0 for r in reports)
    assert np.array_equal(DenseRepresentation.load(target).vectors, before)
