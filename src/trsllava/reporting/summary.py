"""The short summary a run ends with on screen (the workflow's ``onsuccess`` handler, ``trsllava summary``).

Per dataset: the best caption-set row (kind ``captions``), the best row of each baseline (zero-shot
CLIP) and of the human-caption oracle (diagnostic), each with mR and its tie bounds; then what was
skipped and why, and where the ablation table, the figures and the report are. At most
``MAX_LINES`` lines: further datasets are counted, not listed.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..models.availability import read_records, skipped
from .tables import KIND_COLUMN

MAX_LINES = 24


def _row_line(label: str, row: dict) -> str:
    name = " · ".join(str(row[k]) for k in ("captioner", "prompt", "encoder", "aggregation"))
    extra = f", {row['normalization']}" if row.get("normalization") not in (None, "none") else ""
    return (f"  {label:<11} {name}{extra}   mR {row['mR']:.2f}  "
            f"(ties: {row['mR_pessimistic']:.2f} to {row['mR_optimistic']:.2f})")


def _best(rows: pl.DataFrame) -> dict | None:
    rows = rows.filter(pl.col("mR").is_not_null() & pl.col("mR").is_not_nan())
    return None if rows.is_empty() else rows.sort("mR", descending=True).row(0, named=True)


def dataset_lines(ablation: pl.DataFrame, dataset: str) -> list[str]:
    """The lines of one dataset: header, best caption set, each baseline captioner, the oracle."""
    rows = ablation.filter(pl.col("dataset") == dataset)
    kinds = rows[KIND_COLUMN] if KIND_COLUMN in rows.columns else pl.Series(["captions"] * rows.height)
    rows = rows.with_columns(kinds.fill_null("captions").alias(KIND_COLUMN))
    first = rows.row(0, named=True)
    lines = [f"{dataset}: {first.get('n_gallery_images', '?')} gallery images, {first.get('n_t2i_queries', '?')} "
             f"text-to-image / {first.get('n_i2t_queries', '?')} image-to-text queries"]
    best = _best(rows.filter(pl.col(KIND_COLUMN) == "captions"))
    lines.append(_row_line("best", best) if best else "  best        (no caption-set row: every captioner was skipped)")
    for kind, label in (("baseline", "baseline"), ("diagnostic", "diagnostic")):
        part = rows.filter(pl.col(KIND_COLUMN) == kind)
        for captioner in sorted(part["captioner"].unique().to_list()):
            row = _best(part.filter(pl.col("captioner") == captioner))
            if row:
                lines.append(_row_line(label, row))
    return lines


def run_summary(config: dict, record_paths: list, results: Path | None = None) -> str:
    """The summary text (at most MAX_LINES lines) of the results folder of ``config``."""
    results = Path(results or config.get("results", "results"))
    records = read_records(record_paths)
    left_out = skipped(records)
    ablation_path = results / "ablation.parquet"
    tail = []
    if left_out:
        tail.append("skipped (their model cannot be had here; the run has no rows for them):")
        tail += [f"  {_label(r)} ({r['model']}): {r['reason']}" for r in left_out]
        tail.append("  to include them: set the entry's model to a local model folder, or run where the Hugging Face "
                    "hub is reachable")
    figures = results / "figures"
    headline = sorted(figures.glob("headline.*"))
    report = results / "report.html"  # written by `make run` once the workflow has finished
    tail += [
        f"ablation table: {results / 'ablation.csv'} (also .md, .tex, .parquet)" if ablation_path.is_file()
        else "ablation table: not built by this run (target `all` or `figures` builds it)",
        f"figures: {figures}/ ({', '.join(p.name for p in headline)}, per-dataset heatmaps and recall bars)" if headline
        else "figures: not drawn by this run",
        f"report: {report} (make run writes it after the run; by hand: snakemake --report {report})",
    ]
    head = ["", "trsllava: run summary (mR in %, expected under random tie-breaking; ties: pessimistic to optimistic)"]
    body: list[str] = []
    if ablation_path.is_file():
        ablation = pl.read_parquet(ablation_path)
        datasets = sorted(ablation["dataset"].unique().to_list())
        room = MAX_LINES - len(head) - len(tail) - 1
        for position, dataset in enumerate(datasets):
            lines = dataset_lines(ablation, dataset)
            if len(body) + len(lines) > room:
                body.append(f"... and {len(datasets) - position} more dataset(s): see the ablation table")
                break
            body += lines
    lines = head + body + tail
    return "\n".join(lines[:MAX_LINES])


def _label(record: dict) -> str:
    return f"clip:{record['name']}" if record["kind"] == "clip" else record["name"]
