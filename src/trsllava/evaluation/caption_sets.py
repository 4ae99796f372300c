"""Which caption sets of one captioner are evaluated: the ablation's ``prompt`` axis.

  <prompt>          every text the prompt produced (all variants and fields)
  <prompt>/<field>  one field alone, when a prompt has several (e.g. rsrt/feature)
  <prompt>/joined   the fields of each variant joined into one text (the RSRT paper's database
                    text), when a prompt has several fields; built by ``join_fields``, embedded apart
  fused             the union of all prompts of the captioner, when it has several
  <fusion name>     a weighted score fusion of caption sets (config ``caption_sets.fusions``): an
                    image (t2i) or caption (i2t) scores the weighted mean of its scores in each set,
                    per aggregation; an image without a text in one of the sets scores -inf
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ..captioning.prompts import JOINED_FIELD, join_field_texts

FUSED = "fused"


def caption_set_views(captions: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    views = []
    prompts = sorted(captions["prompt"].unique().to_list())
    for prompt in prompts:
        rows = captions.filter(pl.col("prompt") == prompt)
        views.append((prompt, rows))
        fields = sorted(f for f in rows["field"].unique().to_list() if f is not None)
        if len(fields) > 1:
            views += [(f"{prompt}/{field}", rows.filter(pl.col("field") == field)) for field in fields]
    if len(prompts) > 1:
        views.append((FUSED, captions))
    return views


def joined_label(prompt: str) -> str:
    return f"{prompt}/{JOINED_FIELD}"


def join_fields(captions: pl.DataFrame, field_orders: dict[str, tuple[str, ...]] | None = None) -> pl.DataFrame:
    """The joined caption set of every prompt with two or more fields: per (image, prompt, variant)
    one row, field ``joined``, its fields' texts joined in the prompt's field order (``field_orders``,
    e.g. rsrt: one_sentence, feature, caption; a prompt not listed keeps the order of first
    appearance in the table) with the captioning stage's rule (``join_field_texts``: a full stop
    ends a part that ends no sentence). Columns as the caption table, provenance kept from the
    variant's first field; empty when no prompt has several fields."""
    field_orders = field_orders or {}
    rows = captions.filter(pl.col("field").is_not_null() & (pl.col("field") != JOINED_FIELD))
    pieces = []
    for prompt in rows["prompt"].unique(maintain_order=True).to_list():
        part = rows.filter(pl.col("prompt") == prompt)
        found = part["field"].unique(maintain_order=True).to_list()
        if len(found) < 2:
            continue
        listed = [f for f in field_orders.get(prompt, ()) if f in found]
        order = listed + [f for f in found if f not in listed]
        part = part.with_columns(pl.col("field").replace_strict(order, list(range(len(order))), return_dtype=pl.Int64).alias("_order"))
        grouped = (
            part.with_row_index("_row")
            .sort(["image_id", "variant", "_order", "_row"], nulls_last=True)
            .group_by(["image_id", "variant"], maintain_order=True)
            .agg(pl.col("text"), pl.all().exclude("text", "_order", "_row", "image_id", "variant", "field").first())
        )
        pieces.append(grouped.with_columns(
            pl.col("text").map_elements(lambda parts: join_field_texts(list(parts)), return_dtype=pl.String),
            pl.lit(JOINED_FIELD).alias("field"),
        ).select(captions.columns))
    if not pieces:
        return captions.clear()
    return pl.concat(pieces)


@dataclass(frozen=True)
class CaptionSetFusion:
    """A weighted score fusion of caption set views (weights positive, summing to 1)."""

    label: str
    members: tuple
    weights: tuple[float, ...]
