"""C06 on ShardRun and the merge, with stub backends (fast): a bad file or an image the backend fails
on is a listed failure with its reason, never a dead shard; failures are retried by the next run;
a broken backend (every image failing) stops the shard; the failure share rule names the report."""

import json
from pathlib import Path

import polars as pl
import pytest

from trsllava import steps
from trsllava.captioning.prompts import load_prompts
from trsllava.captioning.shard import SYSTEMIC_ERRORS, ShardRun, image_failures, read_progress
from trsllava.captioning.types import GenerationResult
from trsllava.errors import TrsllavaError
from trsllava.failures import check_failure_share

CASES = Path(__file__).resolve().parent / "data" / "cases" / "C06"
SAMPLING = {"max_tokens": 4, "temperature": 0.0, "seed": 0}


class Stub:
    """Answers "<image name> <sample>"; raises for images whose name contains ``fail_on``."""

    max_image_side = None

    def __init__(self, fail_on=None):
        self.fail_on, self.calls = fail_on, []

    def describe(self):
        return {"backend": "stub", "model_id": "stub", "model_revision": None}

    def generate(self, requests):
        self.calls.append([Path(r.image_path).name for r in requests])
        for request in requests:
            if self.fail_on and self.fail_on in request.image_path:
                raise RuntimeError(f"processor crash on {Path(request.image_path).name}")
        return [GenerationResult([f"{Path(r.image_path).stem} {i}" for i in range(r.n)], ["stop"] * r.n, 1, r.n)
                for r in requests]


def c06_images(extra=()):
    names = sorted(p.name for p in CASES.glob("*.jpg"))
    paths = [str(CASES / n) for n in names] + [str(p) for p in extra]
    return pl.DataFrame({"image_id": [Path(p).name for p in paths], "path": paths})


def prompts():
    return [load_prompts()["rsicd_style"], load_prompts()["one_sentence"]]


def by_image(rows):
    found = {}
    for row in rows:
        found.setdefault(row["image_id"], set()).add((row["status"], row["detail"]))
    return found


def test_bad_files_are_failure_rows_and_are_retried_next_time(tmp_path):
    images = c06_images(extra=[tmp_path / "deleted_after_listing.jpg"])
    stub = Stub()
    progress = tmp_path / "progress" / "shard-0-of-1.jsonl"
    rows = ShardRun(stub, prompts(), SAMPLING, batch_size=3).run(images, progress)
    statuses = by_image(rows)
    for good in ("airport_1.jpg", "beach_1.jpg", "church_1.jpg"):
        assert {s for s, _ in statuses[good]} == {"ok"}
    reasons = {name: next(iter(statuses[name])) for name in ("harbor_2.jpg", "notes.jpg", "deleted_after_listing.jpg")}
    assert reasons["harbor_2.jpg"][0] == "unreadable" and "truncated or corrupt" in reasons["harbor_2.jpg"][1]
    assert reasons["notes.jpg"][0] == "unreadable" and "not an image file" in reasons["notes.jpg"][1]
    assert reasons["deleted_after_listing.jpg"] == ("unreadable", f"image {tmp_path / 'deleted_after_listing.jpg'}: file not found")
    assert len(rows) == 6 * 2  # every (image, prompt), failed ones included
    assert all(name not in {"harbor_2.jpg", "notes.jpg"} for call in stub.calls for name in call)  # never reached the model
    assert {row["image_id"] for row in read_progress(progress)} == {"airport_1.jpg", "beach_1.jpg", "church_1.jpg"}

    # the next run: finished captions reused, failures tried again (and listed again)
    again = Stub()
    rerun = ShardRun(again, prompts(), SAMPLING, batch_size=3).run(images, progress)
    assert again.calls == [] and by_image(rerun) == statuses


def test_an_image_the_backend_fails_on_fails_alone(tmp_path):
    stub = Stub(fail_on="beach_1")
    images = c06_images().filter(pl.col("image_id").is_in(["airport_1.jpg", "beach_1.jpg", "church_1.jpg"]))
    rows = ShardRun(stub, prompts(), SAMPLING, batch_size=6).run(images, tmp_path / "p" / "a.jsonl")
    statuses = by_image(rows)
    assert statuses["beach_1.jpg"] == {("error", "RuntimeError: processor crash on beach_1.jpg")}
    assert {s for s, _ in statuses["airport_1.jpg"]} == {s for s, _ in statuses["church_1.jpg"]} == {"ok"}
    assert stub.calls[0] == ["airport_1.jpg"] * 2 + ["beach_1.jpg"] * 2 + ["church_1.jpg"] * 2  # the batch, then alone
    assert all(len(call) == 1 for call in stub.calls[1:])
    # retried by the next run, with nothing else recomputed
    fixed = Stub()
    ShardRun(fixed, prompts(), SAMPLING, batch_size=6).run(images, tmp_path / "p" / "a.jsonl")
    assert fixed.calls == [["beach_1.jpg", "beach_1.jpg"]]


def test_a_broken_backend_stops_the_shard_and_keeps_finished_work(tmp_path):
    sample = Path(__file__).resolve().parents[1] / "src" / "trsllava" / "data" / "sample" / "images"
    paths = sorted(str(p) for p in sample.glob("*.jpg"))[:SYSTEMIC_ERRORS + 2]
    images = pl.DataFrame({"image_id": [Path(p).name for p in paths], "path": paths})

    class BreaksAfterTwo(Stub):
        answered = 0

        def generate(self, requests):
            if self.answered == 2:
                raise ConnectionError("server gone")
            self.answered += 1
            return super().generate(requests)

    progress = tmp_path / "p" / "a.jsonl"
    with pytest.raises(TrsllavaError) as stopped:
        ShardRun(BreaksAfterTwo(), [load_prompts()["rsicd_style"]], SAMPLING, batch_size=1).run(images, progress)
    message = str(stopped.value)
    assert f"failed on {SYSTEMIC_ERRORS} images in a row" in message and "ConnectionError: server gone" in message
    assert "\n" not in message and len(read_progress(progress)) == 2  # what finished before is kept


def test_failure_share_rule_and_one_line(tmp_path):
    rows = [{"image_id": "a", "status": "ok", "detail": None}, {"image_id": "b", "status": "unreadable", "detail": "x"},
            {"image_id": "b", "status": "unreadable", "detail": "x"}, {"image_id": "c", "status": "error", "detail": "y"},
            {"image_id": "d", "status": "invalid_json", "detail": "z"}]  # a bad answer is not an image failure
    report = image_failures(rows, 40, 0.05)
    assert report["failed_images"] == 2 and report["failed_share"] == 0.05
    assert [f["image_id"] for f in report["failures"]] == ["b", "c"]
    check_failure_share(report, "captioner 't'", "captioners.t.max_failure_share", tmp_path / "q.json")  # 5% is allowed
    with pytest.raises(TrsllavaError) as refused:
        check_failure_share(image_failures(rows, 39, 0.05), "captioner 't'", "captioners.t.max_failure_share",
                            tmp_path / "q.json")
    assert str(refused.value) == (
        f"captioner 't': 2 of 39 images (5.1%) could not be read or processed, more than captioners.t.max_failure_share "
        f"(5.0%); the images and reasons are listed in {tmp_path / 'q.json'} (fix or remove them, or raise "
        "captioners.t.max_failure_share)")


def test_quality_report_then_merge_refuses_above_the_share(tmp_path):
    images = c06_images()
    rows = ShardRun(Stub(), prompts(), SAMPLING).run(images, tmp_path / "p" / "a.jsonl")
    shard = tmp_path / "shard-0-of-1.json"
    shard.write_text(json.dumps({"backend": {}, "rows": rows}))
    images_path = tmp_path / "images.parquet"
    images.with_columns(pl.col("image_id").alias("filename"), pl.lit("test").alias("split")).write_parquet(images_path)
    config = {"captioners": {"t": {"backend": "transformers", "model": "m", "prompts": ["rsicd_style", "one_sentence"]}}}
    quality = tmp_path / "t.quality.json"
    steps.caption_quality(config, "c06", "t", [shard], images_path, quality)
    report = json.loads(quality.read_text())
    assert report["images"]["failed_images"] == 2 and report["images"]["max_failure_share"] == 0.05
    assert report["rsicd_style"]["status"]["unreadable"] == 2
    with pytest.raises(TrsllavaError, match=str(quality)):
        steps.merge_caption_shards(config, "c06", "t", [shard], images_path, quality, tmp_path / "t.parquet",
                                   tmp_path / "t.coverage.json")
    assert not (tmp_path / "t.parquet").exists()
    config["captioners"]["t"]["max_failure_share"] = 0.4
    steps.caption_quality(config, "c06", "t", [shard], images_path, quality)
    steps.merge_caption_shards(config, "c06", "t", [shard], images_path, quality, tmp_path / "t.parquet",
                               tmp_path / "t.coverage.json")
    assert set(pl.read_parquet(tmp_path / "t.parquet")["image_id"]) == {"airport_1.jpg", "beach_1.jpg", "church_1.jpg"}
