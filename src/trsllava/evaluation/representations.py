"""Several saved representations of one encoder seen as one list of texts (the evaluator's view).

The joined database texts of a captioner (``<prompt>/joined``) are embedded apart from its caption
table, so that adding them changes no existing caption set (BM25's statistics are those of the
collection it indexed). ``StackedRepresentation`` puts the parts end to end: text i of part p is
row ``offsets[p] + i``; scoring goes to each part in turn, so every part keeps its own index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..encoders import Representation


class StackedRepresentation(Representation):
    """``parts`` end to end. As queries: each row is scored by its own part. As documents (through
    ``pair_scores``): the columns of each part side by side."""

    def __init__(self, parts: Sequence[Representation]):
        super().__init__([text for part in parts for text in part.texts])
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(part) for part in self.parts])

    def scores_against(self, documents: Representation, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = None
        for index, part in enumerate(self.parts):
            mine = np.flatnonzero((rows >= self.offsets[index]) & (rows < self.offsets[index + 1]))
            if not len(mine):
                continue
            block = pair_scores(part, documents, rows[mine] - self.offsets[index])
            if out is None:
                out = np.empty((len(rows), block.shape[1]), dtype=block.dtype)
            out[mine] = block
        if out is None:
            out = np.zeros((0, _width(documents)), dtype=np.float32)
        return out


def _width(documents: Representation) -> int:
    return len(documents)


def pair_scores(queries: Representation, documents: Representation, rows: np.ndarray) -> np.ndarray:
    """(len(rows) x len(documents)) scores of the texts ``rows`` of ``queries`` against every text of
    ``documents``; either side may be a StackedRepresentation."""
    if isinstance(documents, StackedRepresentation):
        return np.hstack([pair_scores(queries, part, rows) for part in documents.parts])
    return queries.scores_against(documents, rows)
