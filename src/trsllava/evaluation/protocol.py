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

log = logging.getLogger(__name__)

AGGREGATIONS = ("max", "mean", "rrf")


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
        self.gen_index = {text: i for i, text in enumerate(generated_rep.texts)}
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

    def view(self, label: str, rows: pl.DataFrame) -> View:
        return View.build(label, rows, self.image_index, self.gen_index)

    # -- budget ---------------------------------------------------------------------------------
    def _block_rows(self, floats_per_row: int) -> int:
        budget = self.settings.memory_mb * 2**20 / 8  # float64 worst case
        return max(1, int(budget // max(floats_per_row, 1)))

    # -- text to image --------------------------------------------------------------------------
    def text_to_image(self, views: list[View]) -> pl.DataFrame:
        pieces = []
        for queries in self.t2i_blocks(views):
            relevant = self.t2i_relevant(queries)
            ids = self.ref_caption_id[queries].astype(str)
            for view, aggregation, scores in self.t2i_scores(queries, views):
                counts = tie_counts(scores, relevant, self.settings.tie_tolerance, ids)
                pieces.append(_frame("t2i", view.label, aggregation, ids, counts))
        return pl.concat(pieces)

    def t2i_blocks(self, views: list[View], share: int = 1) -> Iterator[np.ndarray]:
        """Blocks of text-to-image queries (rows of the reference table) within the memory budget,
        ``share`` evaluations holding their blocks at once; equal texts fall in the same block."""
        query_texts = np.unique(self.ref_text[self.t2i_queries])
        width = len(self.generated_rep) + sum(len(v.gen_idx) for v in views) + 3 * self.n_images
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
        sims = self.reference_rep.scores_against(self.generated_rep, texts)
        for view in views:
            for aggregation in self.settings.aggregations:
                yield view, aggregation, self._aggregate_images(sims, view, aggregation)[query_rows]

    def _aggregate_images(self, sims: np.ndarray, view: View, aggregation: str) -> np.ndarray:
        """(queries x images) scores from (queries x unique texts) similarities."""
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
    def image_to_text(self, views: list[View]) -> pl.DataFrame:
        pieces = []
        for images in self.i2t_blocks(views):
            relevant = self.i2t_relevant(images)
            ids = np.array([self.image_ids[i] for i in images], dtype=object).astype(str)
            for view, aggregation, scores in self.i2t_scores(images, views):
                counts = tie_counts(scores, relevant, self.settings.tie_tolerance, ids)
                pieces.append(_frame("i2t", view.label, aggregation, ids, counts))
        return pl.concat(pieces)

    def i2t_blocks(self, views: list[View], share: int = 1) -> Iterator[np.ndarray]:
        """Blocks of image-to-text query images within the memory budget (``share`` as in t2i_blocks)."""
        n_refs = len(self.ref_text)
        rows_per_image = max(1, max((len(v.gen_idx) for v in views), default=1) / max(self.n_images, 1))
        step = self._block_rows(int((len(views) * rows_per_image + 2) * n_refs + len(self.reference_rep)) * share)
        bar = tqdm(total=len(self.query_images), desc="image-to-text", unit="image", disable=not self.settings.progress)
        for start in range(0, len(self.query_images), step):
            images = self.query_images[start : start + step]
            yield images
            bar.update(len(images))
        bar.close()

    def i2t_relevant(self, images: np.ndarray) -> np.ndarray:
        return self.ref_image[None, :] == images[:, None]

    def i2t_scores(self, images: np.ndarray, views: list[View]) -> Iterator[tuple[View, str, np.ndarray]]:
        """(view, aggregation, images x reference captions scores) of the image-to-text query
        ``images``, one view and aggregation at a time."""
        settings = self.settings
        n_refs = len(self.ref_text)
        for view in views:
            members = np.flatnonzero(np.isin(view.row_image, images))
            texts, inverse = np.unique(view.gen_idx[members], return_inverse=True)
            sims = self.generated_rep.scores_against(self.reference_rep, texts) if len(texts) else None
            for aggregation in settings.aggregations:
                scores = np.full((len(images), n_refs), -np.inf, dtype=np.float64)
                if sims is not None:
                    starts, owners = _group_starts(view.row_image[members])
                    position = {int(image): i for i, image in enumerate(images)}
                    if aggregation == "rrf":  # ranks need every reference caption, duplicates included
                        per_row = sims[inverse][:, self.ref_text]
                        per_row = 1.0 / (settings.rrf_k + rankdata(-per_row, method="min", axis=1))
                        per_image = _reduce(per_row, starts, "sum", axis=0)
                    else:  # max/mean commute with picking columns: reduce on distinct texts first
                        per_image = _reduce(sims[inverse], starts, aggregation, axis=0)[:, self.ref_text]
                    scores[[position[int(o)] for o in owners]] = per_image
                yield view, aggregation, scores


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


def _frame(direction: str, label: str, aggregation: str, queries: np.ndarray, counts) -> pl.DataFrame:
    above, tied_other, tied_relevant = counts
    return pl.DataFrame(
        {
            "direction": direction,
            "caption_set": label,
            "aggregation": aggregation,
            "query": queries.tolist(),
            "above": above.astype(np.int64),
            "tied_other": tied_other.astype(np.int64),
            "tied_relevant": tied_relevant.astype(np.int64),
        }
    )
