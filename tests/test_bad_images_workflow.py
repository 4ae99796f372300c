"""C06 through Snakemake: corrupt files in a captioning shard and in the CLIP baseline's gallery.

The valid images are captioned, embedded and merged; the truncated JPEG and the text file named
.jpg are listed with their reason in <captioner>.quality.json and beside the CLIP embeddings; above
max_failure_share the run stops in one line naming the report, which stays; raising the share
finishes the run without captioning anything again; a forced rerun of the shards retries only the
failed images and finishes."""

import json
import re
from pathlib import Path

import polars as pl
import pytest

from test_workflow import snakemake, write_config
from trsllava.baselines.tiny_clip import build_tiny_clip
from trsllava.captioning.tiny_models import build_tiny_llava

CASES = Path(__file__).resolve().parent / "data" / "cases"
VALID = {"airport_1.jpg", "beach_1.jpg", "church_1.jpg"}
BAD = {"harbor_2.jpg": "truncated or corrupt", "notes.jpg": "not an image file"}


def configure(workdir: Path, models: dict, share: float | None) -> Path:
    limit = {} if share is None else {"max_failure_share": share}
    return write_config(
        workdir,
        datasets={"c06": {"format": "generic", "annotations": str(CASES / "C06" / "captions_human.csv"),
                          "images": str(CASES / "C06")}},
        captioners={"tiny": {"backend": "transformers", "model": str(models["llava"]), "prompts": ["rsicd_style"],
                             "shards": 1, "max_tokens": 6, "temperature": 0, "batch_size": 2, **limit}},
        encoders={"bm25": {"type": "bm25"}},
        aggregations=["max"],
        baselines={"clip": {"models": {"tiny": {"model": str(models["clip"]), "device": "cpu", **limit}}}, "oracle": False},
        figures={"formats": ["png"]},
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"llava": build_tiny_llava(folder / "llava"), "clip": build_tiny_clip(folder / "clip")}


def shard_counts(workdir: Path) -> tuple[int, int]:
    """(jobs run, jobs found finished) summed over the shard logs of the last run."""
    logs = "".join(p.read_text() for p in sorted((workdir / "results" / "logs" / "caption_shard").rglob("*.log")))
    counts = re.findall(r"shard: (\d+) image x prompt jobs to run, (\d+) already finished", logs)
    return sum(int(a) for a, _ in counts), sum(int(b) for _, b in counts)


def test_corrupt_files_are_listed_failures_and_the_run_finishes(models, tmp_path):
    workdir = configure(tmp_path, models, share=None)  # the default: 5%
    results = workdir / "results" / "c06"
    targets = [str(results / "captions" / "tiny.parquet"), str(results / "baselines" / "clip" / "tiny" / "metrics.parquet")]

    # 2 of 5 images unreadable: 40% > 5%, both the merge and the CLIP evaluation refuse in one line
    refused = snakemake(workdir, "--cores", "2", "--keep-going", *targets, check=False)
    assert refused.returncode != 0
    quality_path = results / "captions" / "tiny.quality.json"
    clip_report = results / "baselines" / "clip" / "tiny" / "embeddings" / "quality.json"
    lines = [line for line in refused.stderr.splitlines() if line.startswith("trsllava: ")]
    assert any("captioner 'tiny' on dataset 'c06': 2 of 5 images (40.0%)" in line and str(quality_path) in line
               and "captioners.tiny.max_failure_share (5.0%)" in line for line in lines), refused.stderr[-3000:]
    assert any("CLIP baseline 'tiny' on dataset 'c06': 2 of 5 images" in line and str(clip_report) in line
               for line in lines), refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    # the reports stay (written by jobs that succeeded); the shards ran to the end
    quality = json.loads(quality_path.read_text())
    failures = {f["image_id"]: f for f in quality["images"]["failures"]}
    assert set(failures) == set(BAD) and quality["images"]["failed_images"] == 2 and quality["images"]["images"] == 5
    for name, reason in BAD.items():
        assert failures[name]["status"] == "unreadable" and reason in failures[name]["reason"] and name in failures[name]["reason"]
    assert quality["rsicd_style"]["status"]["unreadable"] == 2 and quality["rsicd_style"]["outputs"] == 5
    clip = json.loads(clip_report.read_text())
    assert {f["image_id"] for f in clip["failures"]} == set(BAD) and clip["failed_images"] == 2
    shard_files = sorted((results / "captions" / "tiny").glob("shard-*-of-1.json"))
    assert len(shard_files) == 1
    stamps = [p.stat().st_mtime_ns for p in shard_files]
    assert not (results / "captions" / "tiny.parquet").exists()

    # accepting up to half of the images failing: the merge and the rest run, nothing is captioned again
    configure(tmp_path, models, share=0.5)
    snakemake(workdir, "--cores", "2", *targets)
    assert [p.stat().st_mtime_ns for p in shard_files] == stamps
    table = pl.read_parquet(results / "captions" / "tiny.parquet")
    assert set(table["image_id"]) <= VALID
    coverage = json.loads((results / "captions" / "tiny.coverage.json").read_text())
    assert coverage["failed_images"] == 2 and set(BAD) <= set(coverage["images_without_caption"])
    clip_row = pl.read_parquet(results / "baselines" / "clip" / "tiny" / "metrics.parquet").row(0, named=True)
    assert clip_row["n_gallery_images"] == 5 and clip_row["n_i2t_queries"] == 5
    ranks = pl.read_parquet(results / "baselines" / "clip" / "tiny" / "ranks.parquet")
    # every caption of the gallery is the same text: a t2i query ties the 3 embedded images, the 2
    # unreadable ones rank after them (no vector, as an uncaptioned image)
    t2i = ranks.filter(pl.col("direction") == "t2i")
    bad_queries = t2i.filter(pl.col("query").cast(pl.Int64).is_in([3, 4]))  # caption ids of harbor_2, notes
    assert (bad_queries["above"] == 3).all()

    # a rerun finishes; a forced rerun of the shards retries only the failed images
    assert "Nothing to be done" in snakemake(workdir, "-n", *targets).stdout
    snakemake(workdir, "--cores", "2", "--forcerun", "caption_shard", "--", targets[0])
    assert shard_counts(workdir) == (2, 3)
    assert pl.read_parquet(results / "captions" / "tiny.parquet").drop("source").equals(table.drop("source"))


def test_an_invalid_share_is_named(models, tmp_path):
    invalid = snakemake(configure(tmp_path, models, share=1.5), "-n", check=False)
    output = invalid.stdout + invalid.stderr
    assert invalid.returncode != 0 and "1.5 is greater than the maximum of 1" in output and "max_failure_share" in output
