"""Which caption sets of one captioner are evaluated: the ablation's ``prompt`` axis.

  <prompt>          every text the prompt produced (all variants and fields)
  <prompt>/<field>  one field alone, when a prompt has several (e.g. rsrt/feature)
  fused             the union of all prompts of the captioner, when it has several
"""

from __future__ import annotations

import polars as pl

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
