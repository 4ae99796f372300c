"""What the figures show and how: which ablation rows, in which order, under which labels, at which
size and in which formats. All of it comes from config.yaml's `figures:` key, so that a paper
figure is iterated on by editing config and rerunning only the figure rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from ..errors import TrsllavaError

AXES = ("datasets", "captioners", "prompts", "encoders", "aggregations", "normalizations")
COLUMN_OF = {"datasets": "dataset", "captioners": "captioner", "prompts": "prompt", "encoders": "encoder",
             "aggregations": "aggregation", "normalizations": "normalization"}
# dataset names stay: they name files
LABELLED = ("captioner", "prompt", "encoder", "aggregation", "normalization")
ORDERS = ("mR", "config")


@dataclass(frozen=True)
class FigureOptions:
    formats: tuple[str, ...] = ("png", "pdf")
    dpi: int = 150
    width: float | None = None  # inches; None = sized to the content
    max_bar_rows: int = 12
    select: dict[str, list[str]] = field(default_factory=dict)  # axis -> values to keep (absent = all)
    order: str = "mR"  # mR: best first; config: the order of the `select` lists, then as found
    labels: dict[str, str] = field(default_factory=dict)  # name -> display label
    reference_names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, options: dict | None) -> FigureOptions:
        options = dict(options or {})
        select = {axis: [str(v) for v in values] for axis, values in (options.get("select") or {}).items() if values}
        unknown = sorted(set(select) - set(AXES))
        if unknown:
            raise TrsllavaError(f"config: figures.select has unknown axis {unknown}; known: {list(AXES)}")
        order = options.get("order", "mR")
        if order not in ORDERS:
            raise TrsllavaError(f"config: figures.order '{order}' is not one of {list(ORDERS)}")
        return cls(
            formats=tuple(options.get("formats", ("png", "pdf"))),
            dpi=int(options.get("dpi", 150)),
            width=options.get("width"),
            max_bar_rows=int(options.get("max_bar_rows", 12)),
            select=select,
            order=order,
            labels={str(k): str(v) for k, v in (options.get("labels") or {}).items()},
            reference_names=dict(options.get("reference_names") or {}),
        )

    def rows(self, ablation: pl.DataFrame) -> pl.DataFrame:
        """The ablation rows to draw, labelled for display; with order `config`, sorted by the
        position of each value in its `select` list (rows keep their table order within ties)."""
        table = ablation
        for axis, values in self.select.items():
            table = table.filter(pl.col(COLUMN_OF[axis]).cast(pl.String).is_in(values))
        if table.is_empty() and not ablation.is_empty():
            raise TrsllavaError(f"config: figures.select keeps no row of the ablation table ({self.select})")
        if self.order == "config" and self.select:
            keys = [pl.col(COLUMN_OF[axis]).cast(pl.String).replace_strict(
                values, list(range(len(values))), default=len(values), return_dtype=pl.Int64)
                for axis, values in self.select.items()]
            table = table.with_row_index("_table_order").sort([*keys, "_table_order"]).drop("_table_order")
        if self.labels:
            table = table.with_columns(
                pl.col(column).cast(pl.String).replace(self.labels) for column in LABELLED if column in table.columns
            )
        return table
