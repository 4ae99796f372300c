"""The readable table `trsllava search` prints on stdout."""

from __future__ import annotations

import textwrap

from .query import SearchResult


def _short(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...")


def format_table(result: SearchResult, width: int = 72) -> str:
    if result.mode == "text":
        head = f'query: "{result.query}"'
    else:
        head = f"image: {result.query} ({len(result.query_texts)} query text(s))"
    settings = (f"{result.dataset} / {result.captioner} (caption set {result.caption_set}) / {result.encoder}, "
                f"aggregation {result.aggregation}: top {len(result.hits)} {result.target}")
    lines = [head, settings]
    id_width = max([len("image"), *(len(h.image_id) for h in result.hits)])
    lines.append(f"{'rank':>4}  {'score':>7}  {'image':<{id_width}}  {'matched caption' if result.mode == 'text' else 'caption'}")
    for hit in result.hits:
        source = f"{hit.prompt}/{hit.field}" if hit.field else (hit.prompt or "human")
        mark = ""
        if result.mode == "image":
            mark = " *" if hit.same_image else ""
            if len(hit.image_ids) > 1:
                mark += f" (+{len(hit.image_ids) - 1} images)"
        lines.append(f"{hit.rank:>4}  {hit.score:>7.4f}  {hit.image_id:<{id_width}}  {_short(hit.text, width)} [{source}]{mark}")
    if result.mode == "image":
        lines.append("* a caption of the query image itself")
    if not result.hits:
        lines.append("(no result)")
    return "\n".join(lines)
