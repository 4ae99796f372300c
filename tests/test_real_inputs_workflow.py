"""Cases C01 and C03 through Snakemake, as a user runs them: blank human captions give truthful query
counts and the right recall rows, and a byte-order mark or CRLF line ends (in the annotations, the
caption files and the config itself) change nothing in the ablation."""

import json
from pathlib import Path

import polars as pl
import pytest

from test_workflow import snakemake, write_config

CASES = Path(__file__).parent / "data" / "cases"
METRICS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR", "mR_optimistic", "mR_pessimistic",
           "n_t2i_queries", "n_i2t_queries", "n_gallery_images"]


@pytest.fixture(scope="module")
def case_run(tmp_path_factory):
    c01, c03 = CASES / "C01", CASES / "C03"
    workdir = write_config(
        tmp_path_factory.mktemp("cases"),
        datasets={
            "c01": {"format": "karpathy", "annotations": str(c01 / "dataset_c01.json")},
            "k": {"format": "karpathy", "annotations": str(c03 / "dataset_c03.json")},
            "k_bom": {"format": "karpathy", "annotations": str(c03 / "dataset_c03_bom.json")},
            "g_bom": {"format": "generic", "annotations": str(c03 / "generic_c03_bom.jsonl")},
        },
        captioners={
            "c01-caps": {"backend": "import", "files": {"c01": str(c01 / "captions_c01.jsonl")}},
            "plain": {"backend": "import", "files": {"k": str(c03 / "captions_c03.jsonl")}},
            "bom": {"backend": "import", "files": {"k_bom": str(c03 / "captions_c03_bom.jsonl"),
                                                   "g_bom": str(c03 / "captions_c03_bom.jsonl")}},
            "bom-csv": {"backend": "import", "files": {"k_bom": str(c03 / "captions_c03_bom.csv")}},
        },
        encoders={"bm25": {"type": "bm25"}},
        baselines={"clip": {"models": {}}, "oracle": True},
    )
    config = workdir / "config.yaml"  # the config itself as Windows Notepad saves it: BOM and CRLF
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes().replace(b"\n", b"\r\n"))
    snakemake(workdir, "--cores", "2", str(workdir / "results" / "ablation.csv"))
    return workdir


def rows(run, **where):
    table = pl.read_csv(run / "results" / "ablation.csv")
    for column, value in where.items():
        table = table.filter(pl.col(column) == value)
    return table.sort("prompt", "encoder", "aggregation")


def test_c01_query_counts_are_truthful(case_run):
    c01 = rows(case_run, dataset="c01")
    assert c01.height == 3 + 2 + 2  # the caption set x 3 aggregations, and both oracle variants x max, mean
    assert set(c01["n_t2i_queries"]) == {13} and set(c01["n_i2t_queries"]) == {3} and set(c01["n_gallery_images"]) == {4}


def test_c01_recall_rows_by_hand(case_run):
    """BM25, one generated caption per image. Every usable query shares its content words with its own
    image's caption far more than with any other (e.g. "an elevated road bridge spans the river" meets
    "road" in the storage tanks caption and "river" in the viaduct one: one term each, and the shorter
    viaduct caption scores higher under BM25's length normalisation), and each image's caption matches
    its own human captions best: every recall is 100. With the 7 blank captions as queries (they match
    nothing: all four images tie), t2i R@1 would be (13 + 7/4) / 20 = 73.75, and the storage tanks image,
    with nothing to find, would add a miss to image-to-text: R@1 3/4 = 75."""
    caption_rows = rows(case_run, dataset="c01", captioner="c01-caps")
    assert caption_rows["aggregation"].to_list() == ["max", "mean", "rrf"]
    for row in caption_rows.iter_rows(named=True):
        for metric in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR", "mR_pessimistic"):
            assert row[metric] == pytest.approx(100.0), (row["aggregation"], metric)
    ranks = pl.read_parquet(case_run / "results" / "c01" / "eval" / "bm25" / "c01-caps.ranks.parquet")
    assert sorted(ranks.filter(pl.col("direction") == "i2t")["query"].unique()) == ["harbor_9004.tif", "tenniscourt_9003.tif",
                                                                                  "viaduct_9002.tif"]
    assert sorted(ranks.filter(pl.col("direction") == "t2i")["query"].unique().cast(pl.Int64)) == [5, 8, 9, *range(10, 20)]


def test_c01_dataset_report_and_log(case_run):
    report = json.loads((case_run / "results" / "c01" / "dataset" / "report.json").read_text())
    assert report["blank_captions"]["by_image"] == {"storagetanks_9001.tif": 5, "viaduct_9002.tif": 2}
    assert report["images_without_usable_caption"] == ["storagetanks_9001.tif"]
    assert report["queries"] == {"text_to_image": 13, "image_to_text": 3}
    log = (case_run / "results" / "logs" / "prepare_dataset" / "c01.log").read_text()
    assert "7 blank caption(s) in 2 image(s) dropped" in log and "storagetanks_9001.tif (5)" in log
    assert "1 image(s) have no usable caption" in log
    clean = json.loads((case_run / "results" / "k_bom" / "dataset" / "report.json").read_text())
    assert clean["blank_captions"]["count"] == 0 and clean["queries"] == {"text_to_image": 15, "image_to_text": 3}


def test_c03_rows_identical_with_and_without_bom(case_run):
    reference = rows(case_run, dataset="k", captioner="plain").select("prompt", "encoder", "aggregation", *METRICS)
    assert reference.height == 3 and set(reference["n_t2i_queries"]) == {15}
    # the generic file holds the Karpathy file's captions: with a BOM it gives the same rows too
    for dataset, captioner in (("k_bom", "bom"), ("k_bom", "bom-csv"), ("g_bom", "bom")):
        other = rows(case_run, dataset=dataset, captioner=captioner).select("prompt", "encoder", "aggregation", *METRICS)
        assert other.equals(reference), (dataset, captioner)
    oracle = [rows(case_run, dataset=d, captioner="oracle").select(METRICS) for d in ("k", "k_bom", "g_bom")]
    assert all(o.equals(oracle[0]) for o in oracle[1:])
