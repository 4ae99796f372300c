"""Fused retrieval: reciprocal-rank fusion (RRF) of several encoders, an ablation row of its own.

For every caption set view and aggregation, each encoder e ranks the candidates of a query after
aggregation, exactly as its own evaluation does (text-to-image: a human caption ranks the gallery
images; image-to-text: an image ranks every human caption), and the fused score is

    fused(q, c) = sum over e of  w_e / (k + rank_e(q, c))

Ranks under ties are competition ("min") ranks with the evaluator's tie tolerance tau:

    rank_e(q, c) = 1 + #{c' : s_e(q, c') > s_e(q, c) + tau}

so candidates an encoder cannot tell apart share the best rank of their tie group (as the caption
slot ``rrf`` aggregation does); with tau = 0 this is ``scipy.stats.rankdata(-s, method="min")``.
Uncaptioned images (score -inf) tie last. The fused scores are then evaluated by the same tie-aware
code as any encoder, with ties at ``FUSED_TIE_TOLERANCE``: a fused score is a sum of reciprocals of
integer ranks, so equal rank tuples give bitwise equal sums and the encoders' tolerance has already
been applied where the ranks were taken; 1e-12 absorbs the rounding of sums taken in another order
while staying far below the gap between neighbouring ranks (about 1 / (k + n)^2).

Blocks: a query's ranks need only its own row of scores, so the fusion walks the same query blocks
as the single-encoder evaluation, holding one block of scores per encoder at a time.

Hubness-aware scoring: with one ``Hubness`` per encoder, each encoder's *normalised* scores are
ranked (the normalization's penalties are per encoder: hubs of a dense space are not BM25's), and
the fused row of normalization N fuses every encoder's ranking under N. The normalised scores keep
the raw scores' units, so the rank tolerance tau means the same as without normalization.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from .fusion_spec import FusionSpec, check_fusions, fusion_spec
from .protocol import Protocol, View, _frame, tie_counts

__all__ = ["FusionSpec", "FusedProtocol", "check_fusions", "competition_ranks", "fusion_spec", "rrf_scores"]

FUSED_TIE_TOLERANCE = 1e-12


def competition_ranks(scores: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Per row, 1 + the number of items of the row scoring more than ``score + tolerance``."""
    scores = np.asarray(scores, dtype=np.float64)
    ordered = np.sort(scores, axis=1)
    ranks = np.empty(scores.shape, dtype=np.int64)
    for row in range(scores.shape[0]):
        ranks[row] = scores.shape[1] - np.searchsorted(ordered[row], scores[row] + tolerance, side="right")
    return ranks + 1


def rrf_scores(blocks: Sequence[np.ndarray], weights: Sequence[float], k: float, tolerance: float) -> np.ndarray:
    """Fused scores of one block of queries from each encoder's (queries x candidates) scores."""
    fused = np.zeros(np.shape(blocks[0]), dtype=np.float64)
    for scores, weight in zip(blocks, weights):
        fused += weight / (k + competition_ranks(scores, tolerance))
    return fused


class FusedProtocol:
    """The evaluation of a fusion: one Protocol per encoder over the same gallery and queries."""

    def __init__(self, protocols: Sequence[Protocol], spec: FusionSpec):
        if len(protocols) != len(spec.encoders):
            raise ValueError(f"{len(protocols)} protocols for {len(spec.encoders)} encoders")
        first = protocols[0]
        for other in protocols[1:]:
            if other.image_ids != first.image_ids or not np.array_equal(other.ref_caption_id, first.ref_caption_id):
                raise ValueError("fused protocols must share the gallery and the reference captions")
        self.protocols = list(protocols)
        self.spec = spec

    def _fuse(self, parts) -> tuple[View, str, str, np.ndarray]:
        labels = {(view.label, aggregation, normalization) for view, aggregation, normalization, _ in parts}
        if len(labels) != 1:
            raise ValueError(f"encoders disagree on the caption set / aggregation / normalization: {sorted(labels)}")
        view, aggregation, normalization, _ = parts[0]
        tolerance = self.protocols[0].settings.tie_tolerance
        return view, aggregation, normalization, rrf_scores([s for *_, s in parts], self.spec.weights, self.spec.k, tolerance)

    def _hubness(self, hubness):
        hubness = [None] * len(self.protocols) if hubness is None else list(hubness)
        if len(hubness) != len(self.protocols):
            raise ValueError(f"{len(hubness)} hubness normalizations for {len(self.protocols)} encoders")
        return hubness

    def text_to_image(self, views: Sequence[list[View]], hubness=None) -> pl.DataFrame:
        """``views``: the caption set views of each encoder's protocol, in the same order;
        ``hubness``: None, or each encoder's ``Hubness`` in the same order."""
        first = self.protocols[0]
        hubness = self._hubness(hubness)
        share = (len(self.protocols) + 1) * (1 if hubness[0] is None else 2)
        pieces = []
        for queries in first.t2i_blocks(views[0], share=share):
            relevant = first.t2i_relevant(queries)
            ids = first.ref_caption_id[queries].astype(str)
            streams = [p.t2i_normalized(queries, v, h) for p, v, h in zip(self.protocols, views, hubness)]
            for parts in zip(*streams, strict=True):
                view, aggregation, normalization, fused = self._fuse(parts)
                counts = tie_counts(fused, relevant, FUSED_TIE_TOLERANCE, ids)
                pieces.append(_frame("t2i", view.label, aggregation, ids, counts, normalization))
        return pl.concat(pieces)

    def image_to_text(self, views: Sequence[list[View]], hubness=None) -> pl.DataFrame:
        first = self.protocols[0]
        hubness = self._hubness(hubness)
        share = (len(self.protocols) + 1) * (1 if hubness[0] is None else 2)
        pieces = []
        for images in first.i2t_blocks(views[0], share=share):
            relevant = first.i2t_relevant(images)
            ids = np.array([first.image_ids[i] for i in images], dtype=object).astype(str)
            streams = [p.i2t_normalized(images, v, h) for p, v, h in zip(self.protocols, views, hubness)]
            for parts in zip(*streams, strict=True):
                view, aggregation, normalization, fused = self._fuse(parts)
                counts = tie_counts(fused, relevant, FUSED_TIE_TOLERANCE, ids)
                pieces.append(_frame("i2t", view.label, aggregation, ids, counts, normalization))
        return pl.concat(pieces)
