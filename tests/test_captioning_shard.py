"""A captioning shard with the tiny random LLaVA: outputs, quality report, and kill-and-resume."""

import pytest
import polars as pl

from trsllava.captioning.hf_backend import TransformersBackend
from trsllava.captioning.prompts import load_prompts
from trsllava.captioning.shard import ShardRun, merge_rows, read_progress, shard_images
from trsllava.captioning.tiny_models import build_tiny_llava
from trsllava.datasets import DatasetSpec, load_dataset

SAMPLING = {"max_tokens": 12, "temperature": 0.7, "seed": 0}


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    folder = build_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava")
    return TransformersBackend(str(folder), max_new_tokens=SAMPLING["max_tokens"], temperature=SAMPLING["temperature"])


@pytest.fixture(scope="module")
def images():
    all_images, _ = load_dataset(DatasetSpec.from_config("sample", {"format": "builtin"}))
    return shard_images(all_images, 0, 15)  # 4 of the 60 images


class CountingBackend:
    """Counts generate calls per image, and can die after a number of calls (a killed job)."""

    def __init__(self, inner, die_after=None):
        self.inner, self.die_after, self.calls = inner, die_after, []

    seed = property(lambda self: self.inner.seed, lambda self, value: setattr(self.inner, "seed", value))

    def describe(self):
        return self.inner.describe()

    def generate(self, requests):
        if self.die_after is not None and len(self.calls) >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.calls += [r.image_path for r in requests]
        return self.inner.generate(requests)


def prompts():
    registry = load_prompts({"rsrt3": {"text": load_prompts()["rsrt"].text, "output": "json", "variants": 3,
                                       "fields": ["one_sentence", "feature", "caption"]}})
    return [registry["rsicd_style"], registry["rsrt3"]]


def test_shards_partition_the_images():
    all_images, _ = load_dataset(DatasetSpec.from_config("sample", {"format": "builtin"}))
    parts = [shard_images(all_images, i, 7)["image_id"].to_list() for i in range(7)]
    assert sorted(sum(parts, [])) == sorted(all_images["image_id"]) and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_rows_and_quality_report(backend, images, tmp_path):
    rows = ShardRun(backend, prompts(), SAMPLING, batch_size=2).run(images, tmp_path / "progress.jsonl")
    assert len(rows) == 4 * (1 + 3)  # rsicd_style once, rsrt3 three variants, per image
    registry = {p.id: p for p in prompts()}
    table, quality = merge_rows(rows, "tiny", registry, SAMPLING, {"trsllava": "test"}, "shard-0")
    # random weights never write valid JSON: every rsrt3 output is a failure, retried once, and listed
    rsrt = quality["rsrt3"]
    assert rsrt["outputs"] == 12 and rsrt["status"]["ok"] == 0
    assert rsrt["status"]["invalid_json"] + rsrt["status"]["truncated"] + rsrt["status"]["empty"] == 12
    assert len(rsrt["failures"]) == 12
    assert rsrt["retried"] == sum(r["attempts"] == 2 for r in rows if r["prompt"] == "rsrt3")
    assert all(r["attempts"] == 1 for r in rows if r["prompt"] == "rsicd_style")  # text is never re-asked
    # free text becomes database text even when cut at max_tokens (still reported); failed JSON never does
    plain = [r for r in rows if r["prompt"] == "rsicd_style"]
    usable = [r for r in plain if r["status"] in ("ok", "truncated") and r["raw"].strip()]
    assert table.filter(pl.col("prompt") == "rsicd_style")["text"].to_list() == [r["raw"].strip() for r in sorted(usable, key=lambda r: r["image_id"])]
    assert table.filter(pl.col("prompt") == "rsrt3").is_empty()
    assert quality["rsicd_style"]["outputs"] == 4
    assert quality["rsicd_style"]["status"]["truncated"] == sum(r["status"] == "truncated" for r in plain)
    assert set(table["backend"]) <= {"transformers"} and set(table["prompt_hash"]) <= {registry["rsicd_style"].hash}


def test_killed_shard_resumes_without_recomputing(backend, images, tmp_path):
    # separate folders: every progress file of a folder counts as finished work
    reference = ShardRun(backend, prompts(), SAMPLING, batch_size=2).run(images, tmp_path / "a" / "whole.jsonl")

    resumed_path = tmp_path / "b" / "resumed.jsonl"
    dying = CountingBackend(backend, die_after=3)
    with pytest.raises(KeyboardInterrupt):
        ShardRun(dying, prompts(), SAMPLING, batch_size=2).run(images, resumed_path)
    finished_before = {(r["image_id"], r["prompt"]) for r in read_progress(resumed_path)}
    assert 0 < len(finished_before) < 8
    with open(resumed_path, "a") as handle:
        handle.write('{"key": "torn')  # killed in the middle of a write

    again = CountingBackend(backend)
    resumed = ShardRun(again, prompts(), SAMPLING, batch_size=2).run(images, resumed_path)
    # every job not finished before the kill is run again, and no finished one is
    redone = {(r["image_id"], r["prompt"]) for r in resumed} - finished_before
    assert len(redone) == 8 - len(finished_before) and len(again.calls) >= len(redone)
    fully_done = {image for image, _ in finished_before if {(image, p.id) for p in prompts()} <= finished_before}
    assert not any(path.rsplit("/", 1)[-1] in fully_done for path in again.calls)
    key = lambda r: (r["image_id"], r["prompt"], r["variant"])
    assert sorted((key(r), r["raw"], r["status"]) for r in resumed) == sorted((key(r), r["raw"], r["status"]) for r in reference)
