"""Search a built archive: a text query ranks the gallery images, an image ranks captions.

``archive`` finds and checks what the workflow built, ``query`` scores, ``gallery_html`` renders a
self-contained page. The command line is ``trsllava search`` (see ``trsllava.cli``).
"""

from .archive import Archive, open_archive
from .query import AGGREGATIONS, Hit, SearchResult, image_search, text_search

__all__ = ["AGGREGATIONS", "Archive", "Hit", "SearchResult", "image_search", "open_archive", "text_search"]
