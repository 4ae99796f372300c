"""The ablation table: every (dataset, captioner, prompt, encoder, aggregation, normalization)
evaluation in one frame, written as CSV, Parquet, Markdown and LaTeX; and the published reference numbers."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import polars as pl
from tabulate import tabulate

from trsllava.atomic import write_csv, write_parquet, write_text

KEY_COLUMNS = ["dataset", "captioner", "prompt", "encoder", "aggregation", "normalization"]
NORMALIZATION_COLUMN = "normalization"
NO_NORMALIZATION = "none"  # rows of metrics files without the column (baselines, older runs)
ABLATION_COLUMNS = [
    *KEY_COLUMNS,
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "mR",
    "mR_optimistic",
    "mR_pessimistic",
]


# What a row is: a caption set (the pipeline), a baseline (zero-shot CLIP) or a diagnostic (the
# human-caption oracle, never a headline). Metrics files without the column are caption sets.
KIND_COLUMN = "kind"
KIND_CAPTIONS = "captions"
KIND_DIAGNOSTIC = "diagnostic"


def gather_ablation(metric_files: list[Path]) -> pl.DataFrame:
    """Concatenate the per-evaluation metrics parquet files into one ablation frame: the
    ABLATION_COLUMNS first, then every other column, sorted by the key columns."""
    files = [Path(f) for f in metric_files]
    if not files:
        raise ValueError("no metrics files to gather")
    frame = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    frame = with_normalization(frame)
    missing = [c for c in ABLATION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"metrics files lack column(s) {missing}")
    frame = frame.with_columns(
        (pl.col(KIND_COLUMN).fill_null(KIND_CAPTIONS) if KIND_COLUMN in frame.columns else pl.lit(KIND_CAPTIONS)).alias(KIND_COLUMN)
    )
    rest = [c for c in frame.columns if c not in ABLATION_COLUMNS]
    return frame.select(ABLATION_COLUMNS + rest).sort(KEY_COLUMNS, maintain_order=True)


def with_normalization(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with a ``normalization`` column, ``none`` where a row has none."""
    if NORMALIZATION_COLUMN in frame.columns:
        return frame.with_columns(pl.col(NORMALIZATION_COLUMN).fill_null(NO_NORMALIZATION))
    return frame.with_columns(pl.lit(NO_NORMALIZATION).alias(NORMALIZATION_COLUMN))


def headline_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows that figures and best-row picks consider: every row but the diagnostic ones (the
    human-caption oracle), which are upper bounds and not results of a retrieval system."""
    if KIND_COLUMN not in frame.columns:
        return frame
    return frame.filter(pl.col(KIND_COLUMN).fill_null(KIND_CAPTIONS) != KIND_DIAGNOSTIC)


def to_markdown(frame: pl.DataFrame) -> str:
    """GitHub-flavoured Markdown table of the ABLATION_COLUMNS, numbers with 2 decimals."""
    table = frame.select(ABLATION_COLUMNS)
    numeric = [dtype.is_numeric() for dtype in table.dtypes]
    rows = [
        ["" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row] for row in table.rows()
    ]
    # text is formatted here so that tabulate never re-parses a prompt label such as "1" as a number
    return tabulate(
        rows,
        headers=table.columns,
        tablefmt="github",
        disable_numparse=True,
        colalign=["right" if is_num else "left" for is_num in numeric],
    ) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#",
                  "$": r"\$", "{": r"\{", "}": r"\}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def transductive(frame: pl.DataFrame) -> pl.Expr:
    """Rows whose normalization took its statistics from the evaluated queries themselves (labelled
    ``...-transductive``): reported, never a best row."""
    if NORMALIZATION_COLUMN not in frame.columns:
        return pl.lit(False)
    return pl.col(NORMALIZATION_COLUMN).fill_null(NO_NORMALIZATION).str.contains("transductive", literal=True)


def _best_mr(frame: pl.DataFrame) -> list[bool]:
    """Whether each row holds its dataset's best mR (ties all count as best; diagnostic rows and
    transductive normalizations never do)."""
    eligible = pl.col(KIND_COLUMN).fill_null(KIND_CAPTIONS) != KIND_DIAGNOSTIC if KIND_COLUMN in frame.columns else pl.lit(True)
    eligible = eligible & ~transductive(frame)
    mr = pl.when(eligible).then(pl.col("mR"))
    best = frame.select((eligible & (mr == mr.max().over("dataset"))).fill_null(False))
    return best.to_series().to_list()


def to_latex(frame: pl.DataFrame) -> str:
    """A booktabs LaTeX tabular of the ABLATION_COLUMNS; each dataset's best mR in bold."""
    table = frame.select(ABLATION_COLUMNS)
    numeric = [dtype.is_numeric() for dtype in table.dtypes]
    best = _best_mr(frame)
    mr_index = table.columns.index("mR")
    spec = "".join("r" if is_num else "l" for is_num in numeric)
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    previous_dataset = None
    for row, is_best in zip(table.rows(), best):
        if previous_dataset is not None and row[0] != previous_dataset:
            lines.append(r"\midrule")
        previous_dataset = row[0]
        cells = []
        for index, (value, is_num) in enumerate(zip(row, numeric)):
            if value is None:
                cell = "--"
            elif is_num:
                cell = f"{value:.2f}"
            else:
                cell = latex_escape(value)
            if index == mr_index and is_best and value is not None:
                cell = rf"\textbf{{{cell}}}"
            cells.append(cell)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_ablation(frame: pl.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Write ablation.{csv,parquet,md,tex} atomically under ``out_dir``; return them by format."""
    out_dir = Path(out_dir)
    paths = {fmt: out_dir / f"ablation.{fmt}" for fmt in ("csv", "parquet", "md", "tex")}
    write_csv(frame, paths["csv"])
    write_parquet(frame, paths["parquet"])
    write_text(to_markdown(frame), paths["md"])
    write_text(to_latex(frame), paths["tex"])
    return paths


def load_reference_results() -> pl.DataFrame:
    """The published retrieval numbers packaged with trsllava (one row per method and source)."""
    resource = resources.files("trsllava") / "data" / "reference_results.csv"
    with resources.as_file(resource) as path:
        return pl.read_csv(path, infer_schema_length=None)
