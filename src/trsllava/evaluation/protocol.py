"""Score every query of both directions in memory-bounded blocks and reduce each to tie counts.

Text-to-image: each human caption of the evaluation split ranks the gallery images; an image scores
as the aggregate of its database texts' similarities to the caption.
Image-to-text: each image of the evaluation split, represented by its database texts, ranks every
human caption of the gallery; a hit when any of its own captions is in the top K.

Aggregations over an image's database texts (``AGGREGATIONS``):
  max   the best-matching text (the paper's choice)
  mean  the average similarity
  rrf   reciprocal-rank fusion, sum over the image's caption slots of 1 / (rrf_k + rank): each slot
        (prompt, variant, field, ordinal) is one ranker. Text-to-image: slot s ranks the images by
        their slot-s text; image-to-text: each of the image's texts ranks the human captions.
        Ranks are competition ranks (1 + number of strictly better items), so equal scores stay equal.

Similarities are computed once per *unique* text pair (identical texts therefore tie exactly) in
blocks of queries sized to ``memory_mb``: no queries x captions matrix is ever held whole.

Hubness-aware scoring (``hubness.py``): with a ``Hubness`` given, every (caption set, aggregation)
is evaluated once per normalization, its scores normalised before the same tie counting; the
query bank's statistics come in blocks through ``bank_blocks``, ``t2i_bank_scores`` and
``grouped_i2t_scores``, the very scoring code of the evaluated queries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.stats import rankdata
from tqdm.auto import tqdm

from ..encoders import Representation
from .caption_sets import CaptionSetFusion
from .representations import StackedRepresentation, pair_scores

log = logging.getLogger(__name__)

AGGREGATIONS = ("max", "mean", "rrf")
NO_NORMALIZATION = "none"


@dataclass(frozen=True)
class Settings:
    aggregations: tuple[str, ...] = AGGREGATIONS
    tie_tolerance: float = 1e-6
    rrf_k: float = 60.0
    memory_mb: float = 256.0
    progress: bool = True


@dataclass
class View:
    """One caption set seen by the evaluator: rows of the caption table, sorted by image then slot."""

    label: str
    gen_idx: np.ndarray  # unique-text index of each row
    row_image: np.ndarray  # gallery image index of each row
    row_slot: np.ndarray  # slot id of each row (unique within an image)

    @classmethod
    def build(cls, label: str, rows: pl.DataFrame, image_index: dict, gen_index: dict) -> "View":
        rows = rows.filter(pl.col("image_id").is_in(list(image_index)))
        slot_key = pl.concat_str(
            [pl.col("prompt"), pl.col("variant").cast(pl.String).fill_null("-"), pl.col("field").fill_null("-")],
            separator="|",
        )
        rows = rows.with_columns(
            pl.col("image_id").replace_strict(image_index, return_dtype=pl.Int64).alias("image"),
            pl.col("text").replace_strict(gen_index, return_dtype=pl.Int64).alias("gen"),
            slot_key.alias("slot_key"),
        )
        # several texts of one image in the same (prompt, variant, field) are told apart by order
        rows = rows.with_columns(pl.int_range(pl.len()).over(["image", "slot_key"]).alias("ordinal"))
        rows = rows.with_columns(
            pl.concat_str([pl.col("slot_key"), pl.col("ordinal").cast(pl.String)], separator="#").alias("slot_key")
        )
        rows = rows.sort(["image", "slot_key"])
        slots = rows["slot_key"].rank("dense").cast(pl.Int64).to_numpy() - 1
        return cls(label, rows["gen"].to_numpy(), rows["image"].to_numpy(), slots)


class Protocol:
    """The fixed part of an evaluation: gallery, queries and the two text representations."""

    def __init__(
        self,
        images: pl.DataFrame,
        references: pl.DataFrame,
        split: str,
        reference_rep: Representation,
        generated_rep: Representation,
        settings: Settings = Settings(),
    ):
        self.settings = settings
        self.image_ids = images["image_id"].to_list()
        self.image_index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self.n_images = len(self.image_ids)
        self.reference_rep = reference_rep
        self.generated_rep = generated_rep
        parts = generated_rep.parts if isinstance(generated_rep, StackedRepresentation) else [generated_rep]
        offsets = np.cumsum([0] + [len(part) for part in parts])
        self.gen_indexes = [{text: int(offsets[p]) + i for i, text in enumerate(part.texts)} for p, part in enumerate(parts)]
        self.gen_index = self.gen_indexes[0]
        ref_index = {text: i for i, text in enumerate(reference_rep.texts)}

        references = references.filter(pl.col("image_id").is_in(self.image_ids))
        self.ref_caption_id = references["caption_id"].to_numpy()
        self.ref_text = references["text"].replace_strict(ref_index, return_dtype=pl.Int64).to_numpy()
        self.ref_image = references["image_id"].replace_strict(self.image_index, return_dtype=pl.Int64).to_numpy()
        # image-to-text queries: split images with at least one reference caption (a query needs a
        # relevant item; an image whose captions were all blank is a gallery image only)
        self.query_images = query_images(images["split"].to_numpy() == split, self.ref_image)
        is_query = np.isin(self.ref_image, self.query_images)
        self.t2i_queries = np.flatnonzero(is_query)  # reference rows that are text-to-image queries

    def view(self, label: str, rows: pl.DataFrame, part: int = 0) -> View:
        """The caption set ``rows`` as a view; ``part``: which part of a StackedRepresentation
        (the generated texts) holds their texts."""
        return View.build(label, rows, self.image_index, self.gen_indexes[part])

    # -- budget ---------------------------------------------------------------------------------
    def _block_rows(self, floats_per_row: int) -> int:
        budget = self.settings.memory_mb * 2**20 / 8  # float64 worst case
        return max(1, int(budget // max(floats_per_row, 1)))

    # -- text to image --------------------------------------------------------------------------
    def text_to_image(self, views: list[View], hubness=None) -> pl.DataFrame:
        """Per-query tie counts of every view and aggregation (and normalization of ``hubness``)."""
        pieces = []
        share = 1 if hubness is None else 2  # a normalised copy of each block of scores
        for queries in self.t2i_blocks(views, share=share):
            relevant = self.t2i_relevant(queries)
            ids = self.ref_caption_id[queries].astype(str)
            for view, aggregation, normalization, scores in self.t2i_normalized(queries, views, hubness):
                counts = tie_counts(scores, relevant, self.settings.tie_tolerance, ids)
                pieces.append(_frame("t2i", view.label, aggregation, ids, counts, normalization))
        return pl.concat(pieces)

    def t2i_normalized(self, queries: np.ndarray, views: list[View], hubness=None):
        """(view, aggregation, normalization label, scores): t2i_scores once per normalization."""
        for view, aggregation, scores in self.t2i_scores(queries, views):
            if hubness is None:
                yield view, aggregation, NO_NORMALIZATION, scores
                continue
            for label, normalized in hubness.normalized("t2i", view.label, aggregation, scores):
                yield view, aggregation, label, normalized

    def t2i_blocks(self, views: list[View], share: int = 1) -> Iterator[np.ndarray]:
        """Blocks of text-to-image queries (rows of the reference table) within the memory budget,
        ``share`` evaluations holding their blocks at once; equal texts fall in the same block."""
        query_texts = np.unique(self.ref_text[self.t2i_queries])
        width = len(self.generated_rep) + sum(view_rows(v) for v in views) + 3 * self.n_images
        step = self._block_rows(width * share)
        bar = tqdm(total=len(query_texts), desc="text-to-image", unit="query", disable=not self.settings.progress)
        for start in range(0, len(query_texts), step):
            texts = query_texts[start : start + step]
            yield self.t2i_queries[np.isin(self.ref_text[self.t2i_queries], texts)]
            bar.update(len(texts))
        bar.close()

    def t2i_relevant(self, queries: np.ndarray) -> np.ndarray:
        relevant = np.zeros((len(queries), self.n_images), dtype=bool)
        relevant[np.arange(len(queries)), self.ref_image[queries]] = True
        return relevant

    def t2i_scores(self, queries: np.ndarray, views: list[View]) -> Iterator[tuple[View, str, np.ndarray]]:
        """(view, aggregation, queries x gallery images scores) of the text-to-image ``queries``,
        one view and aggregation at a time; each distinct query text is scored once."""
        texts, query_rows = np.unique(self.ref_text[queries], return_inverse=True)
        sims = pair_scores(self.reference_rep, self.generated_rep, texts)
        for view in views:
            for aggregation in self.settings.aggregations:
                yield view, aggregation, self._aggregate_images(sims, view, aggregation)[query_rows]

    def t2i_bank_scores(self, rep: Representation, rows: np.ndarray, views: list[View]):
        """((view label, aggregation), bank queries x images scores) of the texts ``rows`` of ``rep``
        (a query bank, or the evaluated captions), scored exactly as text-to-image queries."""
        sims = pair_scores(rep, self.generated_rep, rows)
        for view in views:
            for aggregation in self.settings.aggregations:
                yield (view.label, aggregation), self._aggregate_images(sims, view, aggregation)

    def _aggregate_images(self, sims: np.ndarray, view: View, aggregation: str) -> np.ndarray:
        """(queries x images) scores from (queries x unique texts) similarities."""
        if isinstance(view, CaptionSetFusion):
            return _weighted_mean([self._aggregate_images(sims, m, aggregation) for m in view.members], view.weights)
        out = np.full((sims.shape[0], self.n_images), -np.inf, dtype=np.float64)
        if len(view.gen_idx) == 0:
            return out
        columns = sims[:, view.gen_idx]
        if aggregation == "rrf":
            fused = np.zeros_like(out)
            for slot in np.unique(view.row_slot):
                members = np.flatnonzero(view.row_slot == slot)
                ranks = rankdata(-columns[:, members], method="min", axis=1)
                fused[:, view.row_image[members]] += 1.0 / (self.settings.rrf_k + ranks)
            captioned = np.unique(view.row_image)
            out[:, captioned] = fused[:, captioned]
            return out
        starts, images = _group_starts(view.row_image)
        out[:, images] = _reduce(columns, starts, aggregation, axis=1)
        return out

    # -- image to text --------------------------------------------------------------------------
    def image_to_text(self, views: list[View], hubness=None) -> pl.DataFrame:
        """Per-query tie counts of every view and aggregation (and normalization of ``hubness``)."""
        pieces = []
        share = 1 if hubness is None else 2
        for images in self.i2t_blocks(views, share=share):
            relevant = self.i2t_relevant(images)
            ids = np.array([self.image_ids[i] for i in images], dtype=object).astype(str)
            for view, aggregation, normalization, scores in self.i2t_normalized(images, views, hubness):
                counts = tie_counts(scores, relevant, self.settings.tie_tolerance, ids)
                pieces.append(_frame("i2t", view.label, aggregation, ids, counts, normalization))
        return pl.concat(pieces)

    def i2t_normalized(self, images: np.ndarray, views: list[View], hubness=None):
        """(view, aggregation, normalization label, scores): i2t_scores once per normalization."""
        for view, aggregation, scores in self.i2t_scores(images, views):
            if hubness is None:
                yield view, aggregation, NO_NORMALIZATION, scores
                continue
            for label, normalized in hubness.normalized("i2t", view.label, aggregation, scores):
                yield view, aggregation, label, normalized

    def i2t_blocks(self, views: list[View], share: int = 1, progress: bool | None = None,
                   images: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Blocks of image-to-text query images (default: the split's) within the memory budget
        (``share`` as in t2i_blocks)."""
        images = self.query_images if images is None else images
        n_refs = len(self.ref_text)
        rows_per_image = max(1, max((view_rows(v) for v in views), default=1) / max(self.n_images, 1))
        members = max((view_members(v) for v in views), default=1)
        step = self._block_rows(int((len(views) * rows_per_image + 1 + members) * n_refs + len(self.reference_rep)) * share)
        show = self.settings.progress if progress is None else progress
        bar = tqdm(total=len(images), desc="image-to-text", unit="image", disable=not show)
        for start in range(0, len(images), step):
            block = images[start : start + step]
            yield block
            bar.update(len(block))
        bar.close()

    def bank_blocks(self, n_rows: int, views: list[View], direction: str = "t2i",
                    texts_per_query: float = 1.0) -> Iterator[np.ndarray]:
        """Blocks (index arrays into 0..n_rows) of bank queries within the memory budget: t2i, bank
        texts scoring the gallery images through every view; i2t, bank pseudo-images of about
        ``texts_per_query`` texts scoring every human caption. Room is left for the statistics'
        working copies (a merge of the top-k and the exp of one block)."""
        if direction == "t2i":
            width = len(self.generated_rep) + sum(view_rows(v) for v in views) + 5 * self.n_images
        else:
            width = int(texts_per_query * (len(self.reference_rep) + len(self.ref_text)) + 5 * len(self.ref_text))
        step = self._block_rows(width)
        for start in range(0, n_rows, step):
            yield np.arange(start, min(start + step, n_rows))

    def i2t_relevant(self, images: np.ndarray) -> np.ndarray:
        return self.ref_image[None, :] == images[:, None]

    def i2t_scores(self, images: np.ndarray, views: list[View]) -> Iterator[tuple[View, str, np.ndarray]]:
        """(view, aggregation, images x reference captions scores) of the image-to-text query
        ``images``, one view and aggregation at a time."""
        for view in views:
            for aggregation, scores in self._i2t_view_scores(images, view):
                yield view, aggregation, scores

    def _i2t_view_scores(self, images: np.ndarray, view) -> Iterator[tuple[str, np.ndarray]]:
        """(aggregation, images x reference captions scores) of one view, one aggregation at a time
        (a caption-set fusion walks its members in step)."""
        if isinstance(view, CaptionSetFusion):
            for parts in zip(*(self._i2t_view_scores(images, member) for member in view.members), strict=True):
                yield parts[0][0], _weighted_mean([scores for _, scores in parts], view.weights)
            return
        members = np.flatnonzero(np.isin(view.row_image, images))
        position = {int(image): i for i, image in enumerate(images)}
        stream = self.grouped_i2t_scores(self.generated_rep, view.gen_idx[members], view.row_image[members])
        for aggregation in self.settings.aggregations:
            scores = np.full((len(images), len(self.ref_text)), -np.inf, dtype=np.float64)
            found = next(stream, None)
            if found is not None:
                _, owners, per_image = found
                scores[[position[int(o)] for o in owners]] = per_image
            yield aggregation, scores

    def grouped_i2t_scores(self, rep: Representation, text_rows: np.ndarray,
                           owner: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(aggregation, owners, owners x reference captions scores), one aggregation at a time:
        each owner (an image, or a bank pseudo-image) is represented by its texts ``text_rows`` of
        ``rep`` (rows sorted by ``owner``) and scores every human caption of the gallery; nothing
        when there is no row."""
        if len(text_rows) == 0:
            return
        settings = self.settings
        texts, inverse = np.unique(text_rows, return_inverse=True)
        sims = rep.scores_against(self.reference_rep, texts)
        starts, owners = _group_starts(owner)
        for aggregation in settings.aggregations:
            if aggregation == "rrf":  # ranks need every reference caption, duplicates included
                per_row = sims[inverse][:, self.ref_text]
                per_row = 1.0 / (settings.rrf_k + rankdata(-per_row, method="min", axis=1))
                per_owner = _reduce(per_row, starts, "sum", axis=0)
            else:  # max/mean commute with picking columns: reduce on distinct texts first
                per_owner = _reduce(sims[inverse], starts, aggregation, axis=0)[:, self.ref_text]
            yield aggregation, owners, per_owner


def query_images(in_split: np.ndarray, ref_image: np.ndarray) -> np.ndarray:
    """Gallery indices of the image-to-text query images: ``in_split`` (bool per gallery image) and
    owning at least one reference caption (``ref_image``: gallery index of each reference row)."""
    referenced = np.zeros(len(in_split), dtype=bool)
    referenced[np.asarray(ref_image, dtype=np.int64)] = True
    return np.flatnonzero(in_split & referenced)


def tie_counts(scores: np.ndarray, relevant: np.ndarray, tolerance: float, queries=None) -> tuple[np.ndarray, ...]:
    """Per row: (above, tied_other, tied_relevant) around the best relevant score (see metrics).

    Every row must have a relevant item: recall is undefined for a query without one, which would
    otherwise count as a silent miss. A row without raises AssertionError naming the ``queries``
    (ids of the rows) concerned."""
    lacking = ~np.asarray(relevant).any(axis=1)
    if lacking.any():
        rows = np.flatnonzero(lacking)
        names = [str(queries[i]) for i in rows[:5]] if queries is not None else [f"row {i}" for i in rows[:5]]
        raise AssertionError(f"{len(rows)} of {len(lacking)} queries have no relevant item (e.g. {', '.join(names)}): "
                             "such a query must not be evaluated")
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
    above = scores > best + tolerance
    tied = (scores >= best - tolerance) & ~above
    return (
        above.sum(axis=1),
        (tied & ~relevant).sum(axis=1),
        (tied & relevant).sum(axis=1),
    )


def _group_starts(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of runs of equal ``owner`` (rows are sorted by owner) and the owner of each run."""
    if len(owner) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    return starts, owner[starts]


def _reduce(values: np.ndarray, starts: np.ndarray, how: str, axis: int) -> np.ndarray:
    if how == "max":
        return np.maximum.reduceat(values, starts, axis=axis).astype(np.float64)
    sums = np.add.reduceat(values.astype(np.float64), starts, axis=axis)
    if how == "sum":
        return sums
    sizes = np.diff(np.r_[starts, values.shape[axis]])
    return sums / (sizes[:, None] if axis == 0 else sizes[None, :])


def view_rows(view) -> int:
    """Caption rows a view scores (a fusion: all its members'), for the memory budget."""
    if isinstance(view, CaptionSetFusion):
        return sum(view_rows(member) for member in view.members)
    return len(view.gen_idx)


def view_members(view) -> int:
    """How many base views a view scores at once (a fusion: its members), for the memory budget."""
    return len(view.members) if isinstance(view, CaptionSetFusion) else 1


def _weighted_mean(parts: list[np.ndarray], weights) -> np.ndarray:
    """Sum of weight x scores (weights sum to 1); -inf in any part (no text in that set) stays -inf."""
    out = np.zeros_like(parts[0], dtype=np.float64)
    for part, weight in zip(parts, weights, strict=True):
        out += weight * part
    return out


def _frame(direction: str, label: str, aggregation: str, queries: np.ndarray, counts,
           normalization: str = "none") -> pl.DataFrame:
    above, tied_other, tied_relevant = counts
    return pl.DataFrame(
        {
            "direction": direction,
            "caption_set": label,
            "aggregation": aggregation,
            "normalization": normalization,
            "query": queries.tolist(),
            "above": above.astype(np.int64),
            "tied_other": tied_other.astype(np.int64),
            "tied_relevant": tied_relevant.astype(np.int64),
        }
    )
