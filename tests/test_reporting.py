"""Rendering tests of the ablation tables and figures on a made-up ablation table."""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from trsllava.reporting.figures import write_figures
from trsllava.reporting.tables import ABLATION_COLUMNS, gather_ablation, load_reference_results, write_ablation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATASETS = ["sample", "rsitmd"]
ENCODERS = ["minilm", "mpnet"]
PROMPTS = ["one_sentence", "rsrt_detailed"]
AGGREGATIONS = ["max", "mean", "rrf"]
BEST = ("rsitmd", "qwen2_vl", "rsrt_detailed", "mpnet", "max")  # carries 42.62, the best mR of rsitmd


def synthetic_rows() -> list[dict]:
    rows = []
    for n, (dataset, encoder, prompt, aggregation) in enumerate(
        itertools.product(DATASETS, ENCODERS, PROMPTS, AGGREGATIONS)
    ):
        base = 4.0 + (n * 7.31) % 12.0 + 1 / 3  # keeps every other mR below 42.62
        row = {"dataset": dataset, "captioner": "qwen2_vl", "prompt": prompt, "encoder": encoder,
               "aggregation": aggregation, "normalization": "none"}
        values = []
        for direction, k in itertools.product(("i2t", "t2i"), (1, 5, 10)):
            value = min(100.0, base * (1 + k / 4) * (0.9 if direction == "t2i" else 1.0))
            row[f"{direction}_r{k}"] = value
            row[f"{direction}_r{k}_optimistic"] = min(100.0, value + 1.5)
            row[f"{direction}_r{k}_pessimistic"] = max(0.0, value - 2.0)
            values.append(value)
        row["mR"] = sum(values) / len(values)
        if (dataset, row["captioner"], prompt, encoder, aggregation) == BEST:
            row["mR"] = 42.62
        row["mR_optimistic"] = row["mR"] + 1.5
        row["mR_pessimistic"] = row["mR"] - 2.0
        row["n_t2i_queries"] = 50
        row["n_i2t_queries"] = 10
        row["n_gallery_images"] = 10
        rows.append(row)
    return rows


@pytest.fixture
def metric_files(tmp_path):
    """One metrics parquet per (dataset, encoder), columns in a scrambled order, rows shuffled."""
    frame = pl.DataFrame(synthetic_rows()).sample(fraction=1.0, shuffle=True, seed=3)
    frame = frame.select(sorted(frame.columns, reverse=True))
    paths = []
    for (dataset, encoder), part in frame.group_by(["dataset", "encoder"]):
        path = tmp_path / "metrics" / f"{dataset}_{encoder}.parquet"
        path.parent.mkdir(exist_ok=True)
        part.write_parquet(path)
        paths.append(path)
    return paths


def test_gather_ablation_order(metric_files):
    ablation = gather_ablation(metric_files)
    assert ablation.columns[: len(ABLATION_COLUMNS)] == ABLATION_COLUMNS
    assert {"i2t_r1_optimistic", "t2i_r10_pessimistic", "n_t2i_queries", "n_gallery_images"} <= set(
        ablation.columns[len(ABLATION_COLUMNS):]
    )
    assert ablation.height == len(DATASETS) * len(ENCODERS) * len(PROMPTS) * len(AGGREGATIONS)
    keys = ["dataset", "captioner", "prompt", "encoder", "aggregation"]
    key_rows = ablation.select(keys).rows()
    assert key_rows == sorted(key_rows)
    assert ablation["dataset"][0] == "rsitmd"


def test_write_ablation(metric_files, tmp_path):
    ablation = gather_ablation(metric_files)
    paths = write_ablation(ablation, tmp_path / "out")
    assert set(paths) == {"csv", "parquet", "md", "tex"}
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    assert not list((tmp_path / "out").glob(".*.tmp"))

    assert pl.read_parquet(paths["parquet"]).equals(ablation)
    csv = pl.read_csv(paths["csv"])
    assert csv.columns == ablation.columns
    assert csv["i2t_r1"].to_list() == pytest.approx(ablation["i2t_r1"].to_list(), abs=1e-12)  # full precision

    markdown = paths["md"].read_text().splitlines()
    header = [cell.strip() for cell in markdown[0].strip("|").split("|")]
    assert header == ABLATION_COLUMNS
    assert set(markdown[1]) <= set("|-: ")
    assert len(markdown) == 2 + ablation.height
    best_line = next(line for line in markdown if "42.62" in line)
    assert "rsrt_detailed" in best_line and "mpnet" in best_line
    assert "44.12" in best_line and "40.62" in best_line  # its mR bounds, 2 decimals
    assert "i2t_r1_optimistic" not in markdown[0]
    # every number has exactly two decimals
    first_number = ABLATION_COLUMNS.index("i2t_r1")
    cells = [c.strip() for line in markdown[2:] for c in line.strip("|").split("|")][first_number:first_number + 9]
    assert all(len(c.split(".")[1]) == 2 for c in cells)

    latex = paths["tex"].read_text()
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex
    assert r"i2t\_r1" in latex and r"rsrt\_detailed" in latex and r"qwen2\_vl" in latex
    assert "rsrt_detailed" not in latex
    assert r"\textbf{42.62}" in latex
    assert latex.count(r"\textbf{") == len(DATASETS)  # one best mR per dataset
    body = [line for line in latex.splitlines() if line.endswith(r"\\")][1:]
    assert all(line.count("&") == len(ABLATION_COLUMNS) - 1 for line in body)


def test_latex_escapes_specials():
    from trsllava.reporting.tables import latex_escape

    assert latex_escape("a_b & c% #1") == r"a\_b \& c\% \#1"


def _check_figures(paths, expected, out):
    assert sorted(paths) == sorted(out / name for name in expected)
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000
        if path.suffix == ".png":
            assert data.startswith(PNG_MAGIC)
        else:
            assert data.startswith(b"%PDF")
    assert not list(out.glob(".*.tmp"))


def test_write_figures(metric_files, tmp_path):
    ablation = gather_ablation(metric_files)
    out = tmp_path / "figures"
    paths = write_figures(ablation, out)
    expected = [
        f"{stem}.{fmt}"
        for stem in ["mr_heatmap_sample", "mr_heatmap_rsitmd", "recall_bars_sample", "recall_bars_rsitmd",
                     "mr_normalization_sample", "mr_normalization_rsitmd", "headline"]
        for fmt in ("png", "pdf")
    ]
    _check_figures(paths, expected, out)


def test_write_figures_single_row(tmp_path):
    row = synthetic_rows()[0]
    ablation = pl.DataFrame([{c: row[c] for c in ABLATION_COLUMNS}])  # no bound columns at all
    out = tmp_path / "one"
    paths = write_figures(ablation, out, formats=("png",))
    _check_figures(paths, ["mr_heatmap_sample.png", "recall_bars_sample.png", "mr_normalization_sample.png", "headline.png"], out)


def test_load_reference_results():
    reference = load_reference_results()
    assert "source" in reference.columns
    assert reference["source"].null_count() == 0
    assert set(reference["dataset"].unique()) == {"rsitmd", "rsicd"}
    # the shared notes file has 20 lines: a header and 19 published rows
    assert reference.height == 19
    assert {"CLIP ViT-B/32", "TRSLLaVA"} <= set(reference["method"])


def test_figure_options_select_order_and_label_rows():
    from trsllava.errors import TrsllavaError
    from trsllava.reporting.figure_options import FigureOptions

    table = pl.DataFrame({"dataset": ["d"] * 4, "captioner": ["a", "b", "a", "b"], "prompt": ["p"] * 4,
                          "encoder": ["e1", "e1", "e2", "e2"], "aggregation": ["max"] * 4, "mR": [1.0, 2.0, 3.0, 4.0]})
    options = FigureOptions.from_config({"select": {"captioners": ["b", "a"], "encoders": ["e2", "e1"]},
                                         "order": "config", "labels": {"b": "Bee", "e2": "E-two"}})
    rows = options.rows(table)
    assert rows.select("captioner", "encoder").rows() == [("Bee", "E-two"), ("Bee", "e1"), ("a", "E-two"), ("a", "e1")]
    assert rows["mR"].to_list() == [4.0, 2.0, 3.0, 1.0]
    assert FigureOptions.from_config({"select": {"encoders": ["e1"]}}).rows(table)["mR"].to_list() == [1.0, 2.0]
    with pytest.raises(TrsllavaError, match="figures.select has unknown axis"):
        FigureOptions.from_config({"select": {"encoder": ["e1"]}})
    with pytest.raises(TrsllavaError, match="keeps no row"):
        FigureOptions.from_config({"select": {"encoders": ["none"]}}).rows(table)


def test_headline_shows_best_row_clip_oracle_and_published(tmp_path):
    from trsllava.reporting.figures import _our_bars, headline

    def row(captioner, prompt, encoder, aggregation, mR, kind):
        return {"dataset": "sample", "captioner": captioner, "prompt": prompt, "encoder": encoder,
                "aggregation": aggregation, "mR": mR, "kind": kind}

    ablation = pl.DataFrame([
        row("cap", "rsrt", "minilm", "max", 50.0, "captions"), row("cap", "rsrt", "minilm", "mean", 55.5, "captions"),
        row("clip:vit-b32", "image", "clip", "max", 30.25, "baseline"),
        row("oracle", "references-loo", "minilm", "max", 94.5, "diagnostic"),
        row("oracle", "references-loo", "minilm", "mean", 90.0, "diagnostic"),
        row("oracle", "references-loo-distinct", "bm25", "mean", 70.0, "diagnostic"),
    ])
    # the best caption-based row (mean beats max), each CLIP row, the best row of each oracle variant
    assert _our_bars(ablation) == [
        ("trsllava (best): cap · rsrt · minilm · mean", 55.5, "ours"),
        ("zero-shot clip:vit-b32", 30.25, "baseline"),
        ("oracle, diagnostic: references-loo · minilm · max", 94.5, "oracle"),
        ("oracle, diagnostic: references-loo-distinct · bm25 · mean", 70.0, "oracle"),
    ]
    fig = headline(ablation)
    fig.savefig(tmp_path / "headline.svg", format="svg")
    svg = (tmp_path / "headline.svg").read_text()
    for text in ("trsllava (best)", "zero-shot clip:vit-b32", "oracle, diagnostic", "diagnostic upper bound", "Sources:"):
        assert text in svg, text


def test_rows_without_normalization_read_as_none_and_transductive_rows_are_never_best(tmp_path):
    from trsllava.reporting.figures import _our_bars, mr_by_normalization
    from trsllava.reporting.tables import to_latex

    old = {c: v for c, v in synthetic_rows()[0].items() if c != "normalization"}  # a metrics file of an older run
    (tmp_path / "old.parquet").write_bytes(b"")
    pl.DataFrame([old]).write_parquet(tmp_path / "old.parquet")
    normalized = [{**old, "normalization": "csls(k=10)", "mR": old["mR"] + 1.0},
                  {**old, "normalization": "qb-norm-transductive(beta=2,k=1)", "mR": old["mR"] + 5.0}]
    pl.DataFrame(normalized).write_parquet(tmp_path / "new.parquet")
    ablation = gather_ablation([tmp_path / "old.parquet", tmp_path / "new.parquet"])
    assert sorted(ablation["normalization"]) == ["csls(k=10)", "none", "qb-norm-transductive(beta=2,k=1)"]
    # the transductive row has the highest mR but is reported only: the bold best is csls
    bold = [line for line in to_latex(ablation).splitlines() if r"\textbf" in line]
    assert len(bold) == 1 and "csls(k=10)" in bold[0]
    assert _our_bars(ablation)[0][0].endswith("· csls(k=10)")  # the headline's best row names its normalization
    fig = mr_by_normalization(ablation, "sample")
    fig.savefig(tmp_path / "norm.svg", format="svg")
    svg = (tmp_path / "norm.svg").read_text()
    for text in ("csls(k=10)", "qb-norm-transductive", "by normalization"):
        assert text in svg, text
