"""Figures of the ablation table: an mR heatmap and recall bars per dataset, and a comparison with
published numbers. Drawn with matplotlib's Agg canvas (no display, no pyplot global state) and
written atomically as PNG and PDF."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from trsllava.atomic import atomic_path  # noqa: E402

from .figure_options import FigureOptions  # noqa: E402
from .tables import (  # noqa: E402
    KIND_CAPTIONS,
    KIND_COLUMN,
    KIND_DIAGNOSTIC,
    NO_NORMALIZATION,
    NORMALIZATION_COLUMN,
    headline_rows,
    load_reference_results,
    transductive,
    with_normalization,
)

DPI = 150
LABEL_SIZE = 8
WRAP = 40
MAX_BAR_ROWS = 12
KS = (1, 5, 10)
DIRECTIONS = {"i2t": "image-to-text", "t2i": "text-to-image"}
SEP = " · "
DEFAULT_REFERENCE_NAMES = {"sample": "rsicd"}
OURS_COLOR = "tab:orange"
PUBLISHED_COLOR = "0.65"
PAPER_COLOR = "0.35"  # the TRSLLaVA paper's own numbers: a darker grey among the published bars
BASELINE_COLOR = "tab:blue"
ORACLE_COLOR = "#b8d8b8"
ORACLE_HATCH = "////"


def wrap(label: str, width: int = WRAP) -> str:
    """Wrap a label longer than ``width`` characters, preferring to break at the " · " separators."""
    if len(label) <= width:
        return label
    return "\n".join(textwrap.wrap(label, width=width, break_long_words=True, break_on_hyphens=False))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "dataset"


def _save(fig: Figure, out_dir: Path, stem: str, formats, dpi: int = DPI, width: float | None = None,
          footer: str | None = None) -> list[Path]:
    FigureCanvasAgg(fig)
    if width:  # a fixed width (e.g. a paper's column); the height keeps the figure's proportions
        old_width, old_height = fig.get_size_inches()
        fig.set_size_inches(width, old_height * width / old_width)
        fig.tight_layout()
    if footer:  # the run's provenance (from results/manifest.json), small, in the bottom-right corner
        fig.text(0.995, 0.002, footer, fontsize=4.5, ha="right", va="bottom", color="0.55")
    written = []
    for fmt in formats:
        path = Path(out_dir) / f"{stem}.{fmt}"
        metadata = {"CreationDate": None} if fmt == "pdf" else None  # reproducible PDF bytes
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
        written.append(path)
    return written


def _row_label(row: dict, columns=("captioner", "prompt", "encoder", "aggregation")) -> str:
    """The row's keys joined; its normalization is added when it is not ``none``."""
    label = SEP.join(str(row[c]) for c in columns)
    normalization = row.get(NORMALIZATION_COLUMN)
    if normalization and normalization != NO_NORMALIZATION:
        label += f"{SEP}{normalization}"
    return label


def _datasets(ablation: pl.DataFrame) -> list[str]:
    return sorted(ablation["dataset"].drop_nulls().unique().to_list())


def _annotated_grid(ax, values: np.ndarray, notes: list[list[str]], *, value_y: float, note_y: float, note_size: float):
    """An mR grid: ``values`` (rows x columns, NaN for none) as a viridis image, each cell labelled
    with its value (bold) and its note below it, in black or white by the cell's luminance; empty
    cells say n/a. Returns the image (for the colorbar)."""
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 1.0, vmax + 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    cmap = image.get_cmap()
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isfinite(values[i, j]):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=LABEL_SIZE, color="0.4")
                continue
            red, green, blue, _ = cmap(image.norm(values[i, j]))
            color = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            ax.text(j, i + value_y, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=9, color=color,
                    fontweight="bold")
            ax.text(j, i + note_y, notes[i][j], ha="center", va="center", fontsize=note_size, color=color)
    return image


# --------------------------------------------------------------------------------------------------
# mR heatmap: caption set x encoder, best aggregation (and normalization) per cell


def mr_heatmap(ablation: pl.DataFrame, dataset: str, order: str = "mR") -> Figure:
    """order: mR (rows and columns alphabetical) or config (as they come in ``ablation``). A cell is
    the best non-transductive row (transductive normalizations appear in mr_by_normalization)."""
    part = ablation.filter((pl.col("dataset") == dataset) & pl.col("mR").is_not_null() & pl.col("mR").is_not_nan())
    part = part.filter(~transductive(part))
    best = (
        part.sort("mR", descending=True, maintain_order=True)
        .group_by(["captioner", "prompt", "encoder"], maintain_order=True)
        .first()
    )
    found = list(dict.fromkeys((r["captioner"], r["prompt"]) for r in part.iter_rows(named=True)))
    caption_sets = found if order == "config" else sorted(found)
    if not caption_sets:
        fig = Figure(figsize=(4.5, 2.6))
        ax = fig.add_subplot()
        ax.axis("off")
        ax.set_title(f"mR (%) — {dataset}", fontsize=10)
        ax.text(0.5, 0.5, "no evaluation with an mR", ha="center", va="center", fontsize=LABEL_SIZE)
        return fig
    encoders = list(dict.fromkeys(part["encoder"].to_list()))
    encoders = encoders if order == "config" else sorted(encoders)
    values = np.full((len(caption_sets), len(encoders)), np.nan)
    aggregations = [[""] * len(encoders) for _ in caption_sets]
    normalized = NORMALIZATION_COLUMN in part.columns and part[NORMALIZATION_COLUMN].drop_nulls().n_unique() > 1
    for r in best.iter_rows(named=True):
        i = caption_sets.index((r["captioner"], r["prompt"]))
        j = encoders.index(r["encoder"])
        values[i, j] = r["mR"]
        aggregations[i][j] = str(r["aggregation"])
        if normalized:
            aggregations[i][j] += "\n" + str(r.get(NORMALIZATION_COLUMN) or NO_NORMALIZATION)

    row_labels = [wrap(f"{c}{SEP}{p}") for c, p in caption_sets]
    col_labels = [wrap(str(e), 20) for e in encoders]
    label_lines = max(label.count("\n") + 1 for label in row_labels)
    width = 3.0 + 1.5 * len(encoders) + 0.06 * max(len(line) for label in row_labels for line in label.split("\n"))
    height = 1.6 + max(0.55 * (1.4 if normalized else 1.0), 0.22 * label_lines) * len(caption_sets)
    fig = Figure(figsize=(max(width, 4.5), max(height, 2.6)))
    ax = fig.add_subplot()
    image = _annotated_grid(ax, values, aggregations, value_y=-0.08, note_y=0.26 if normalized else 0.22,
                            note_size=5 if normalized else 6)
    ax.set_xticks(range(len(encoders)), col_labels, fontsize=LABEL_SIZE)
    ax.set_yticks(range(len(caption_sets)), row_labels, fontsize=LABEL_SIZE)
    ax.set_xlabel("encoder", fontsize=LABEL_SIZE)
    ax.set_ylabel("caption set (captioner · prompt)", fontsize=LABEL_SIZE)
    ax.set_title(f"mR (%) — {dataset}", fontsize=10)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    colorbar.set_label("mR (%), best aggregation" + (" and normalization" if normalized else ""), fontsize=LABEL_SIZE)
    colorbar.ax.tick_params(labelsize=LABEL_SIZE)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# mR by normalization: normalization x encoder, best caption set and aggregation per cell


def mr_by_normalization(ablation: pl.DataFrame, dataset: str, order: str = "mR") -> Figure:
    """Per normalization (rows) and encoder (columns) the best mR over caption sets and
    aggregations, the caption set and aggregation written in the cell; order as mr_heatmap's."""
    part = with_normalization(ablation).filter(
        (pl.col("dataset") == dataset) & pl.col("mR").is_not_null() & pl.col("mR").is_not_nan())
    if KIND_COLUMN in part.columns:  # the CLIP baselines have no caption set to normalise
        part = part.filter(pl.col(KIND_COLUMN).fill_null(KIND_CAPTIONS) == KIND_CAPTIONS)
    if part.is_empty():
        fig = Figure(figsize=(4.5, 2.6))
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, f"mR by normalization — {dataset}: no evaluation", ha="center", va="center", fontsize=LABEL_SIZE)
        return fig
    best = (part.sort("mR", descending=True, maintain_order=True)
            .group_by([NORMALIZATION_COLUMN, "encoder"], maintain_order=True).first())
    normalizations = list(dict.fromkeys(part[NORMALIZATION_COLUMN].to_list()))
    encoders = list(dict.fromkeys(part["encoder"].to_list()))
    if order != "config":
        encoders = sorted(encoders)
        first = [NO_NORMALIZATION] if NO_NORMALIZATION in normalizations else []
        normalizations = first + sorted(n for n in normalizations if n != NO_NORMALIZATION)
    values = np.full((len(normalizations), len(encoders)), np.nan)
    notes = [[""] * len(encoders) for _ in normalizations]
    for r in best.iter_rows(named=True):
        i, j = normalizations.index(r[NORMALIZATION_COLUMN]), encoders.index(r["encoder"])
        values[i, j] = r["mR"]
        notes[i][j] = wrap(f"{r['prompt']} · {r['aggregation']}", 18)
    width = 3.2 + 1.45 * len(encoders) + 0.06 * max(len(n) for n in normalizations)
    fig = Figure(figsize=(max(width, 4.5), max(1.6 + 0.62 * len(normalizations), 2.6)))
    ax = fig.add_subplot()
    image = _annotated_grid(ax, values, notes, value_y=-0.12, note_y=0.25, note_size=5)
    ax.set_xticks(range(len(encoders)), [wrap(str(e), 20) for e in encoders], fontsize=LABEL_SIZE)
    ax.set_yticks(range(len(normalizations)), [wrap(str(n), 32) for n in normalizations], fontsize=LABEL_SIZE)
    ax.set_xlabel("encoder", fontsize=LABEL_SIZE)
    ax.set_ylabel("normalization", fontsize=LABEL_SIZE)
    ax.set_title(f"mR (%) by normalization — {dataset}", fontsize=10)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    colorbar.set_label("mR (%), best caption set and aggregation", fontsize=LABEL_SIZE)
    colorbar.ax.tick_params(labelsize=LABEL_SIZE)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# recall bars: R@1, R@5, R@10 per evaluation, both directions, with tie bounds as error bars


def recall_bars(ablation: pl.DataFrame, dataset: str, order: str = "mR", max_rows: int = MAX_BAR_ROWS) -> Figure:
    """order: mR (best first) or config (as they come in ``ablation``); at most ``max_rows`` rows."""
    part = ablation.filter(pl.col("dataset") == dataset)
    if order != "config":
        part = part.sort("mR", descending=True, nulls_last=True, maintain_order=True)
    part = part.head(max_rows)
    rows = list(part.iter_rows(named=True))
    if not rows:
        fig = Figure(figsize=(4.5, 2.6))
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, f"Recall@K — {dataset}: no evaluation selected", ha="center", va="center", fontsize=LABEL_SIZE)
        return fig
    labels = [wrap(_row_label(r)) for r in rows]
    label_lines = sum(label.count("\n") + 1 for label in labels)
    longest = max(len(line) for label in labels for line in label.split("\n"))
    height = 1.8 + 0.32 * max(len(rows), 1) + 0.14 * label_lines
    fig = Figure(figsize=(8.5 + 0.06 * longest, max(height, 2.8)))
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))
    bar_height = 0.8 / len(KS)
    colors = ["tab:blue", "tab:green", "tab:purple"]
    shown = False
    for ax, (direction, title) in zip(axes, DIRECTIONS.items()):
        top = 0.0
        for index, k in enumerate(KS):
            column = f"{direction}_r{k}"
            expected = np.array([np.nan if r.get(column) is None else r[column] for r in rows], dtype=float)
            offsets = y - 0.4 + bar_height * (index + 0.5)
            xerr = None
            optimistic, pessimistic = f"{column}_optimistic", f"{column}_pessimistic"
            if optimistic in part.columns and pessimistic in part.columns:
                high = np.array([np.nan if r[optimistic] is None else r[optimistic] for r in rows], dtype=float)
                low = np.array([np.nan if r[pessimistic] is None else r[pessimistic] for r in rows], dtype=float)
                below = np.clip(np.nan_to_num(expected - low), 0, None)
                above = np.clip(np.nan_to_num(high - expected), 0, None)
                xerr = np.vstack([below, above])
                shown = shown or bool((xerr > 0).any())
                top = max(top, float(np.nanmax(np.append(high, 0.0))))
            top = max(top, float(np.nanmax(np.append(expected, 0.0))))
            ax.barh(offsets, np.nan_to_num(expected), height=bar_height, color=colors[index], label=f"R@{k}",
                    xerr=xerr, error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "black"})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("recall (%)", fontsize=LABEL_SIZE)
        ax.set_xlim(0, min(100.0, top * 1.08 + 1.0))
        ax.tick_params(labelsize=LABEL_SIZE)
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
        ax.set_axisbelow(True)
    axes[0].set_yticks(y, labels, fontsize=LABEL_SIZE)
    axes[0].invert_yaxis()  # first row (best mR, or first in config order) on top
    axes[1].legend(fontsize=LABEL_SIZE, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    truncated = ablation.filter(pl.col("dataset") == dataset).height > max_rows
    subtitle = f"{len(rows)} evaluation(s)"
    if truncated:
        subtitle = f"the first {len(rows)} evaluation(s) in config order" if order == "config" else \
            f"{len(rows)} evaluation(s) with the highest mR"
    if shown:
        subtitle += "; error bars: pessimistic to optimistic tie bounds"
    fig.suptitle(f"Recall@K — {dataset}\n{subtitle}", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# the headline: per dataset, our best row, the baselines, the oracle and the published numbers


def _published_rows(reference: pl.DataFrame, name: str) -> pl.DataFrame:
    return reference.filter(pl.col("dataset").str.to_lowercase() == name.lower()).filter(pl.col("mR").is_not_null())


def _kind(row: dict) -> str:
    return row.get(KIND_COLUMN) or KIND_CAPTIONS


def _our_bars(rows: pl.DataFrame) -> list[tuple[str, float, str]]:
    """This run's bars for one dataset: the best caption-based row, every baseline row (zero-shot
    CLIP) and the best row of each oracle variant (diagnostic, drawn apart)."""
    bars = []
    frame = rows.with_columns(pl.lit(KIND_CAPTIONS).alias(KIND_COLUMN)) if KIND_COLUMN not in rows.columns else rows
    frame = frame.sort("mR", descending=True, maintain_order=True)
    captions = frame.filter((pl.col(KIND_COLUMN).fill_null(KIND_CAPTIONS) == KIND_CAPTIONS) & ~transductive(frame))
    if not captions.is_empty():
        best = captions.row(0, named=True)
        bars.append((f"trsllava (best): {_row_label(best)}", float(best["mR"]), "ours"))
    for row in frame.filter(pl.col(KIND_COLUMN) == "baseline").iter_rows(named=True):
        bars.append((f"zero-shot {row['captioner']}", float(row["mR"]), "baseline"))
    diagnostic = frame.filter(pl.col(KIND_COLUMN) == KIND_DIAGNOSTIC)
    for row in diagnostic.group_by("prompt", maintain_order=True).first().iter_rows(named=True):
        bars.append((f"oracle, diagnostic: {_row_label(row, ('prompt', 'encoder', 'aggregation'))}", float(row["mR"]), "oracle"))
    return bars


def headline(
    ablation: pl.DataFrame,
    reference: pl.DataFrame | None = None,
    reference_names: dict[str, str] | None = None,
    skipped: list[dict] = (),
) -> Figure:
    """Per dataset: the best trsllava row, the zero-shot CLIP rows, the human-caption oracle (a
    diagnostic upper bound, hatched) and the published numbers, with their sources as footnotes.
    ``skipped``: model records (trsllava.models.availability) of captioners and baselines left out of
    the run because their model could not be had; each is named in the footnote with its reason."""
    reference = load_reference_results() if reference is None else reference
    reference_names = DEFAULT_REFERENCE_NAMES if reference_names is None else reference_names
    mapping = {k.lower(): v for k, v in reference_names.items()}
    datasets = _datasets(ablation)
    sources: list[str] = []
    panels = []
    for dataset in datasets:
        ours = ablation.filter((pl.col("dataset") == dataset) & pl.col("mR").is_not_null() & pl.col("mR").is_not_nan())
        if ours.is_empty():
            continue
        name = mapping.get(dataset.lower(), dataset)
        published = _published_rows(reference, name)
        bars = []  # (label, value, kind)
        for r in published.iter_rows(named=True):
            source = r.get("source") or ""
            if source and source not in sources:
                sources.append(source)
            marker = f" [{sources.index(source) + 1}]" if source else ""
            setting = f" ({r['setting']})" if r.get("setting") else ""
            note = " †" if r.get("note") and "unverified" in str(r["note"]).lower() else ""
            kind = "paper" if "trsllava" in str(r["method"]).lower() else "published"
            bars.append((f"{r['method']}{setting}{marker}{note}", float(r["mR"]), kind))
        bars += _our_bars(ours)
        bars.sort(key=lambda bar: bar[1])
        title = f"mR (%) — {dataset}"
        if name.lower() != dataset.lower():
            title += f"\n(reference numbers are for the full {name} test set)"
        panels.append((title, bars, published.is_empty()))

    heights = [max(len(bars), 1) * 0.3 + 0.9 for _, bars, _ in panels] or [1.0]
    footnote = [f"[{i + 1}] {source}" for i, source in enumerate(sources)]
    if any("†" in label for _, bars, _ in panels for label, _, _ in bars):
        footnote.append("† unverified number")
    footnote += skipped_footnote(skipped)
    footnote_lines = sum(1 + line.count("\n") for line in footnote)  # wrapped lines count
    footnote_height = 0.15 + 0.105 * max(footnote_lines + 1, 6)  # room for the legend beside it
    fig = Figure(figsize=(9.0, sum(heights) + footnote_height + 0.3))
    if not panels:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no evaluation with an mR to compare", ha="center", va="center")
        return fig
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    colors = {"ours": OURS_COLOR, "published": PUBLISHED_COLOR, "paper": PAPER_COLOR, "baseline": BASELINE_COLOR,
              "oracle": ORACLE_COLOR}
    for ax, (title, bars, no_reference) in zip(axes, panels):
        labels = [wrap(label, 56) for label, _, _ in bars]
        values = [value for _, value, _ in bars]
        y = np.arange(len(bars))
        ax.barh(y, values, color=[colors[kind] for _, _, kind in bars], height=0.7,
                hatch=[ORACLE_HATCH if kind == "oracle" else "" for _, _, kind in bars], edgecolor="white", linewidth=0)
        for yi, value, (_, _, kind) in zip(y, values, bars):
            ax.text(value + 0.4, yi, f"{value:.2f}", va="center", fontsize=7,
                    fontweight="bold" if kind == "ours" else "normal")
        ax.set_yticks(y, labels, fontsize=LABEL_SIZE)
        for tick, (_, _, kind) in zip(ax.get_yticklabels(), bars):
            if kind == "ours":
                tick.set_color(OURS_COLOR)
                tick.set_fontweight("bold")
        ax.set_xlim(0, max(values) * 1.12 + 2.0)
        ax.set_xlabel("mR (%)", fontsize=LABEL_SIZE)
        ax.tick_params(axis="x", labelsize=LABEL_SIZE)
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
        ax.set_axisbelow(True)
        if no_reference:
            title += "\n(no published numbers for this dataset)"
        ax.set_title(title, fontsize=10)
    kinds = {kind for _, bars, _ in panels for _, _, kind in bars}
    handles = [
        Patch(facecolor=colors[kind], edgecolor="white", hatch=ORACLE_HATCH if kind == "oracle" else None, label=text)
        for kind, text in (("ours", "this run (best mR)"), ("baseline", "this run: zero-shot CLIP"),
                           ("oracle", "this run: human-caption oracle (diagnostic upper bound)"),
                           ("paper", "TRSLLaVA paper"), ("published", "published"))
        if kind in kinds
    ]
    fig.legend(handles=handles, fontsize=7, loc="lower right", bbox_to_anchor=(0.99, 0.01), frameon=False)
    bottom = footnote_height / fig.get_figheight()
    if footnote:
        fig.text(0.01, 0.01, "\n".join(["Sources:" if sources else "Notes:", *footnote]), fontsize=6, va="bottom",
                 ha="left", color="0.25")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def skipped_footnote(skipped: list[dict]) -> list[str]:
    """Footnote lines naming each model left out of the run, its reason, and the two ways to get it."""
    if not skipped:
        return []
    lines = []
    for r in skipped:
        label = f"clip:{r['name']}" if r["kind"] == "clip" else r["name"]
        lines.append(wrap(f"Not in this run: {label} ({r['model']}): {r.get('reason') or 'model not available'}", 110))
    lines.append("To include a skipped model: set its model to a local model folder, or run where the Hugging Face hub is reachable.")
    return lines


def write_figures(
    ablation: pl.DataFrame,
    out_dir: Path,
    formats=("png", "pdf"),
    reference_names: dict[str, str] | None = None,
    reference: pl.DataFrame | None = None,
    options: FigureOptions | None = None,
    footer: str | None = None,
    datasets: list[str] | None = None,
    skipped: list[dict] = (),
    normalization_figure: bool = True,
) -> list[Path]:
    """Write mr_heatmap_<dataset>, mr_normalization_<dataset> (when ``normalization_figure``),
    recall_bars_<dataset> and headline under ``out_dir``, drawing
    the rows, order, labels, size and formats of ``options`` (config.yaml's `figures:`; ``formats``
    and ``reference_names`` are used when no options are given); return the written paths.
    ``datasets``: datasets that get their figures even without a row (their caption sets skipped);
    ``skipped``: model records of what was left out of the run, named in the headline's footnote."""
    options = options or FigureOptions(formats=tuple(formats), reference_names=dict(reference_names or {}))
    names = options.reference_names or reference_names
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one file per dataset even when the selection (or a skipped model) leaves it empty
    every_dataset = sorted(set(_datasets(ablation)) | set(datasets or []))
    everything = options.rows(ablation)
    ablation = headline_rows(everything)  # the oracle (diagnostic) appears in the headline figure only
    save = {"formats": options.formats, "dpi": options.dpi, "width": options.width, "footer": footer}
    written: list[Path] = []
    for dataset in every_dataset:
        stem = _safe_name(dataset)
        written += _save(mr_heatmap(ablation, dataset, options.order), out_dir, f"mr_heatmap_{stem}", **save)
        if normalization_figure:
            written += _save(mr_by_normalization(ablation, dataset, options.order), out_dir,
                             f"mr_normalization_{stem}", **save)
        written += _save(recall_bars(ablation, dataset, options.order, options.max_bar_rows), out_dir,
                         f"recall_bars_{stem}", **save)
    written += _save(headline(everything, reference, names, skipped), out_dir, "headline", **save)
    return written
