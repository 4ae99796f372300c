"""C08: finished captions are found by cache key in every progress file of the captioner, whatever
the shard layout, batch size or order of the images: changing `shards` from 2 to 3 captions 0
images again and merges the same table."""

import json
import re
from pathlib import Path

import polars as pl
import pytest

from test_workflow import snakemake, write_config
from trsllava.captioning.prompts import load_prompts
from trsllava.captioning.shard import ShardRun, read_progress, shard_images
from trsllava.captioning.tiny_models import build_tiny_llava
from trsllava.captioning.types import GenerationResult
from trsllava.datasets import DatasetSpec, load_dataset

SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "src" / "trsllava" / "data" / "sample" / "images"


def jobs_run(workdir: Path, shards: int) -> list[tuple[int, int]]:
    """(run, already finished) of every shard log of the layout with ``shards`` shards."""
    logs = sorted((workdir / "results" / "logs" / "caption_shard").rglob(f"shard-*-of-{shards}.log"))
    return [tuple(int(n) for n in re.search(r"shard: (\d+) image x prompt jobs to run, (\d+) already finished",
                                            p.read_text()).groups()) for p in logs]


def test_changing_the_shard_count_recaptions_nothing(tmp_path):
    model = build_tiny_llava(tmp_path / "llava")
    names = sorted(p.name for p in SAMPLE_IMAGES.glob("*.jpg"))[:12]
    annotations = tmp_path / "twelve.csv"
    annotations.write_text("filename,caption\n" + "".join(f"{n},an aerial image\n" for n in names))
    entry = {"backend": "transformers", "model": str(model), "prompts": ["rsicd_style", "one_sentence"],
             "max_tokens": 6, "temperature": 0.7, "seed": 3}

    def run(workdir, shards, batch_size):
        write_config(workdir, datasets={"twelve": {"format": "generic", "annotations": str(annotations),
                                                   "images": str(SAMPLE_IMAGES)}},
                     captioners={"tiny": {**entry, "shards": shards, "batch_size": batch_size}})
        snakemake(workdir, "--cores", "2", str(workdir / "results" / "twelve" / "captions" / "tiny.parquet"))
        return pl.read_parquet(workdir / "results" / "twelve" / "captions" / "tiny.parquet")

    workdir = tmp_path / "run"
    two = run(workdir, shards=2, batch_size=4)
    assert sorted(jobs_run(workdir, 2)) == [(12, 0), (12, 0)]  # 6 images x 2 prompts per shard
    three = run(workdir, shards=3, batch_size=3)
    assert sorted(jobs_run(workdir, 3)) == [(0, 8), (0, 8), (0, 8)]  # 0 images recaptioned
    progress = workdir / "results" / "twelve" / "captions" / "tiny" / "progress"
    assert sorted(p.name for p in progress.iterdir() if p.stat().st_size) == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
    assert three.drop("source").equals(two.drop("source"))
    assert set(three["source"]) == {"twelve/tiny/3 shards"}
    quality = json.loads((workdir / "results" / "twelve" / "captions" / "tiny.quality.json").read_text())
    assert quality["rsicd_style"]["outputs"] == 12 and quality["one_sentence"]["outputs"] == 12


# -- the same rule on ShardRun, with a counting stub backend (fast) ---------------------------------

class Counting:
    max_image_side = None

    def __init__(self):
        self.requests = []

    def describe(self):
        return {"backend": "stub", "model_id": "stub", "model_revision": None}

    def generate(self, requests):
        self.requests += requests
        return [GenerationResult([f"{Path(r.image_path).stem} {i}" for i in range(r.n)], ["stop"] * r.n, 1, r.n)
                for r in requests]


@pytest.fixture(scope="module")
def images():
    return load_dataset(DatasetSpec.from_config("sample", {"format": "builtin"}))[0].head(9)


def prompts():
    registry = load_prompts({"three": {"text": "Describe.", "output": "text", "variants": 3}})
    return [registry["rsicd_style"], registry["three"]]


SAMPLING = {"max_tokens": 4, "temperature": 0.7, "seed": 0}


def test_any_layout_batch_size_or_order_reuses_every_finished_job(images, tmp_path):
    folder = tmp_path / "progress"
    first = Counting()
    rows = []
    for shard in range(2):
        rows += ShardRun(first, prompts(), SAMPLING, batch_size=4).run(shard_images(images, shard, 2),
                                                                     folder / f"shard-{shard}-of-2.jsonl")
    assert len(first.requests) == 9 * 2
    again = Counting()
    reversed_order = images.reverse()
    rerun = []
    for shard in range(3):
        rerun += ShardRun(again, prompts(), SAMPLING, batch_size=1).run(shard_images(reversed_order, shard, 3),
                                                                      folder / f"shard-{shard}-of-3.jsonl")
    assert again.requests == []
    key = lambda r: (r["image_id"], r["prompt"], r["variant"] if r["variant"] is not None else -1)
    assert sorted(rerun, key=key) == sorted(rows, key=key)
    assert all(not (folder / f"shard-{s}-of-3.jsonl").read_text() for s in range(3))


def test_a_job_cut_between_its_samples_is_redone(images, tmp_path):
    """A kill between the samples of one key leaves a partial group: it is not finished work."""
    folder = tmp_path / "progress"
    one = images.head(1)
    ShardRun(Counting(), prompts(), SAMPLING).run(one, folder / "a.jsonl")
    lines = (folder / "a.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 3
    (folder / "a.jsonl").write_text("".join(lines[:2]))  # rsicd_style whole, 1 of the 3 samples of "three"
    counting = Counting()
    rows = ShardRun(counting, prompts(), SAMPLING).run(one, folder / "b.jsonl")
    assert [r.prompt_text for r in counting.requests] == ["Describe."]  # only the partial job again
    assert len(rows) == 4 and len(read_progress(folder / "b.jsonl")) == 3
