"""A self-contained HTML page of search results: thumbnails inlined as data URIs, no external resource.

Each result is a ``<figure class="hit" data-image-id=...>`` with its score and the matched caption in
``<mark>``. A small inline script marks the page once every thumbnail has decoded
(``<body data-images-decoded="N/M">`` and ``data-decoded="true"`` on each image), so a headless
browser can prove that the images render. The Content-Security-Policy forbids any non-inline source.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..atomic import atomic_path
from ..errors import TrsllavaError
from ..images import DEFAULT_OPTIONS, ImageOptions, load_rgb
from .query import SearchResult

THUMBNAIL_SIDE = 160

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
header p { color: #555; margin: .2rem 0; }
.hits { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { width: 220px; margin: 0; padding: .5rem; border: 1px solid #ccc; border-radius: 6px; }
figure img, .noimage { display: block; width: 160px; height: 160px; object-fit: cover; margin: 0 auto .4rem; }
.noimage { background: #eee; color: #888; text-align: center; line-height: 160px; font-size: .8rem; }
.rank { font-weight: bold; } .score { float: right; font-family: monospace; }
figcaption { font-size: .85rem; } .id { font-family: monospace; font-size: .75rem; color: #555; word-break: break-all; }
mark { background: #ffe58a; } .query-image img { width: 160px; } .via { color: #666; font-size: .75rem; }
"""

# Sets data-images-decoded="decoded/total" on <body> once every <img> has loaded (naturalWidth > 0).
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images), decoded = 0;
  images.forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    img.setAttribute("data-decoded", ok ? "true" : "false");
    if (ok) { decoded += 1; }
  });
  document.body.setAttribute("data-images-decoded", decoded + "/" + images.length);
});
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def thumbnail_uri(path: str | None, side: int = THUMBNAIL_SIDE, options: ImageOptions = DEFAULT_OPTIONS) -> str | None:
    """A small JPEG of the image as a data URI, from the pixels ``trsllava.images.load_rgb`` gives
    every consumer (None when there is no readable image file)."""
    if not path or not Path(path).is_file():
        return None
    try:
        image = load_rgb(path, options=options, max_side=side)
    except TrsllavaError:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_tag(path: str | None, alt: str, options: ImageOptions = DEFAULT_OPTIONS) -> str:
    uri = thumbnail_uri(path, options=options)
    if uri is None:
        return '<div class="noimage">no image file</div>'
    return f'<img src="{uri}" alt="{html.escape(alt)}" width="{THUMBNAIL_SIDE}" height="{THUMBNAIL_SIDE}">'


def render(result: SearchResult, image_options: ImageOptions = DEFAULT_OPTIONS) -> str:
    """The page of ``result``; thumbnails read with ``image_options`` (the run's ``images:`` config)."""
    e = html.escape
    if result.mode == "text":
        title = f"Search: {result.query}"
        query_block = f'<p>Query: <q class="query">{e(result.query)}</q></p>'
    else:
        title = f"Captions for image {result.query}"
        queries = "".join(f"<li>{e(text)}</li>" for text in result.query_texts)
        query_block = (
            f'<div class="query-image" data-image-id="{e(result.query)}">{_image_tag(result.query_path, result.query, image_options)}'
            f'<p>Query image <span class="id">{e(result.query)}</span>, represented by these texts:</p><ul>{queries}</ul></div>'
        )
    figures = []
    for hit in result.hits:
        source = f"{hit.prompt}/{hit.field}" if hit.field else (hit.prompt or "human caption")
        extra = ""
        if result.mode == "image":
            others = f" (also {len(hit.image_ids) - 1} other image(s))" if len(hit.image_ids) > 1 else ""
            extra = (f'<div class="via">{"own caption" if hit.same_image else "caption of another image"}{others}; '
                     f"best query text: {e(hit.matched_query or '')}</div>")
        figures.append(
            f'<figure class="hit" data-image-id="{e(hit.image_id)}" data-rank="{hit.rank}" data-score="{hit.score:.6f}">'
            f"{_image_tag(hit.path, hit.image_id, image_options)}"
            f'<figcaption><span class="rank">#{hit.rank}</span> <span class="score">{hit.score:.4f}</span>'
            f'<div class="id">{e(hit.image_id)}</div><mark>{e(hit.text)}</mark>'
            f'<div class="via">{e(source)}</div>{extra}</figcaption></figure>'
        )
    settings = (f"dataset {e(result.dataset)} · captioner {e(result.captioner)} · caption set {e(result.caption_set)} · "
                f"encoder {e(result.encoder)} · aggregation {e(result.aggregation)} · ranking {e(result.target)}")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n"
        f'<body data-images-decoded="pending">\n<header><h1>{e(title)}</h1>{query_block}<p>{settings}</p></header>\n'
        f'<main class="hits">\n' + "\n".join(figures) + "\n</main>\n</body>\n</html>\n"
    )


def write_gallery(result: SearchResult, out: Path, image_options: ImageOptions = DEFAULT_OPTIONS) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(render(result, image_options), encoding="utf-8")
    return out
