"""The two reference points of the ablation, scored by the same protocol and tie handling.

CLIP (zero-shot image-text retrieval, kind ``baseline``): the gallery image embeddings play the
part of a caption set with exactly one database item per image (key ``<image>ID``), the human
caption embeddings the part of the reference texts. ``Protocol`` then runs unchanged: text-to-image
ranks images by caption-image cosine, image-to-text ranks the human captions by image-caption
cosine. With one item per image every aggregation gives the same ranking, so only ``max`` is reported.

Oracle (an upper bound of caption-based retrieval, kind ``diagnostic``): each image is represented
by its own human reference captions, embedded by the encoder under test, *leaving out the caption
being scored*. One score serves both directions: the score of human caption c for image j is the
aggregate, over j's reference captions other than c itself (by caption row, so an identical text
written by another annotator still counts), of their similarity to c.

  text-to-image  query c (a caption of image i) ranks the images: i is represented by its other
                 captions, every other image by all of its captions.
  image-to-text  query image i ranks every human caption c: for c one of i's own captions, i is
                 represented by its other captions; for the captions of other images, by all of them.

Two oracle caption sets: ``references-loo`` leaves out the scored caption row only, so an identical
caption written by another annotator of the same image still represents it (RSICD repeats captions
within an image often: 186 of the sample's 300 have an exact duplicate in their image);
``references-loo-distinct`` leaves out every caption of the image with the same text, which measures
how well an image's *other* descriptions identify it.

Without the leave-one-out both directions would be trivial (each query is in its own image's
representation). Aggregations: ``max`` and ``mean`` over the remaining captions. ``rrf`` is not
reported for the oracle: it *sums* one term per caption slot, and leaving the scored caption out
removes a term from exactly the relevant item (the query's own image, the image's own caption), so
the oracle would be biased against the right answer. Oracle rows are diagnostics: they show how far
the human captions themselves can be told apart by an encoder, and are kept out of figures and
best-row picks.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from ..atomic import write_parquet
from ..encoders import Representation
from ..encoders.dense import DenseRepresentation
from .evaluate import summarize
from .protocol import Protocol, Settings, _frame, query_images, tie_counts

log = logging.getLogger(__name__)

CLIP_ENCODER = "clip"
CLIP_PROMPT = "image"
ORACLE_CAPTIONER = "oracle"
ORACLE_PROMPT = "references-loo"
ORACLE_PROMPTS = {"caption": ORACLE_PROMPT, "text": "references-loo-distinct"}  # by what is left out
ORACLE_AGGREGATIONS = ("max", "mean")  # rrf: see the module docstring
KIND_BASELINE = "baseline"
KIND_DIAGNOSTIC = "diagnostic"


# -- CLIP ---------------------------------------------------------------------------------------

def clip_stats(images: pl.DataFrame, references: pl.DataFrame, split: str, image_rep: DenseRepresentation,
               text_rep: DenseRepresentation, settings: Settings, failed: frozenset = frozenset()) -> tuple[pl.DataFrame, Protocol]:
    """Both directions of CLIP retrieval through the caption-set protocol (one item per image).
    ``failed``: ids of images that could not be read (no vector): they rank last in text-to-image,
    as an uncaptioned image does, and as image-to-text queries tie every caption."""
    from ..baselines.clip import image_key

    keys = [image_key(i) for i in images["image_id"].to_list()]
    embedded = set(image_rep.texts)
    missing = sorted(k for k, i in zip(keys, images["image_id"].to_list()) if k not in embedded and i not in failed)
    if missing:
        raise ValueError(f"no CLIP embedding for {len(missing)} gallery image(s), e.g. {missing[0]}")
    present = [k in embedded for k in keys]
    database = pl.DataFrame(
        {"image_id": images["image_id"], "prompt": CLIP_PROMPT, "variant": None, "field": None, "text": keys},
        schema_overrides={"variant": pl.Int64, "field": pl.String},
    ).filter(pl.Series(present))
    protocol = Protocol(images, references, split, text_rep, image_rep, dataclasses.replace(settings, aggregations=("max",)))
    views = [protocol.view(CLIP_PROMPT, database)]
    return pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)]), protocol


def evaluate_clip(*, dataset: str, split: str, model_name: str, images_path: Path, references_path: Path,
                  embeddings_dir: Path, settings: Settings, metrics_out: Path, ranks_out: Path,
                  max_failure_share: float | None = None) -> pl.DataFrame:
    """The CLIP rows. Images listed in the embeddings' ``quality.json`` (unreadable: no vector) rank
    last; more than ``max_failure_share`` of them (default: the share recorded in the report) is a
    ``TrsllavaError`` naming the report."""
    import json

    from ..baselines.clip import IMAGES_DIR, QUALITY_FILE, REFERENCES_DIR, display_name
    from ..failures import check_failure_share

    quality_path = Path(embeddings_dir) / QUALITY_FILE
    failed = frozenset()
    if quality_path.is_file():  # embeddings written before the report existed have no failures
        quality = json.loads(quality_path.read_text())
        if max_failure_share is not None:
            quality["max_failure_share"] = float(max_failure_share)
        check_failure_share(quality, f"CLIP baseline '{model_name}' on dataset '{dataset}'",
                            f"baselines.clip.models.{model_name}.max_failure_share", quality_path)
        failed = frozenset(f["image_id"] for f in quality["failures"])
        if failed:
            log.warning("%s / clip:%s: %d image(s) could not be read and rank last (listed in %s)", dataset, model_name,
                        len(failed), quality_path)
    images = pl.read_parquet(images_path)
    stats, protocol = clip_stats(
        images, pl.read_parquet(references_path), split, DenseRepresentation.load(Path(embeddings_dir) / IMAGES_DIR),
        DenseRepresentation.load(Path(embeddings_dir) / REFERENCES_DIR), settings, failed,
    )
    stats, metrics = summarize(stats, dataset=dataset, captioner=display_name(model_name), encoder=CLIP_ENCODER,
                               n_images=protocol.n_images, kind=KIND_BASELINE)
    log.info("%s / clip:%s: mR %.2f over %d t2i and %d i2t queries", dataset, model_name, metrics["mR"][0],
             metrics["n_t2i_queries"][0], metrics["n_i2t_queries"][0])
    write_parquet(stats, ranks_out)
    write_parquet(metrics, metrics_out)
    return metrics


# -- oracle -------------------------------------------------------------------------------------

class Oracle:
    """Leave-one-out scoring of the human captions against each other (see the module docstring)."""

    def __init__(self, images: pl.DataFrame, references: pl.DataFrame, split: str, rep: Representation,
                 settings: Settings = Settings(), leave_out: str = "caption"):
        if leave_out not in ORACLE_PROMPTS:
            raise ValueError(f"leave_out is 'caption' or 'text', not {leave_out!r}")
        self.settings = settings
        self.leave_out = leave_out
        self.label = ORACLE_PROMPTS[leave_out]
        self.aggregations = [a for a in settings.aggregations if a in ORACLE_AGGREGATIONS]
        self.rep = rep
        self.image_ids = images["image_id"].to_list()
        image_index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self.n_images = len(self.image_ids)
        text_index = {text: i for i, text in enumerate(rep.texts)}
        refs = references.filter(pl.col("image_id").is_in(self.image_ids)).with_columns(
            pl.col("image_id").replace_strict(image_index, return_dtype=pl.Int64).alias("image"),
            pl.col("text").replace_strict(text_index, return_dtype=pl.Int64).alias("tid"),
        )
        refs = refs.with_row_index("order").sort(["image", "order"])  # rows grouped by image
        self.caption_id = refs["caption_id"].to_numpy()
        self.ref_image = refs["image"].to_numpy()
        self.ref_text = refs["tid"].to_numpy()
        self.n_refs = len(self.ref_text)
        self.starts = np.flatnonzero(np.r_[True, self.ref_image[1:] != self.ref_image[:-1]]) if self.n_refs else np.zeros(0, int)
        self.owners = self.ref_image[self.starts]
        # image-to-text queries: split images with at least one reference caption, as in Protocol
        self.query_images = query_images(images["split"].to_numpy() == split, self.ref_image)
        self.t2i_queries = np.flatnonzero(np.isin(self.ref_image, self.query_images))

    def _row_scores(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows) x n_refs) float64 scores of reference rows ``rows`` (as queries) against every
        reference row, the left-out ones at -inf: the row itself, and with ``leave_out="text"`` every
        row of the same image with the same text."""
        texts, inverse = np.unique(self.ref_text[rows], return_inverse=True)
        sims = np.asarray(self.rep.scores_against(self.rep, texts), dtype=np.float64)
        block = sims[inverse][:, self.ref_text]
        block[np.arange(len(rows)), rows] = -np.inf
        if self.leave_out == "text":
            same = (self.ref_image[None, :] == self.ref_image[rows, None]) & (self.ref_text[None, :] == self.ref_text[rows, None])
            block[same] = -np.inf
        return block

    def _step(self) -> int:
        budget = self.settings.memory_mb * 2**20 / 8
        return max(1, int(budget // (4 * max(self.n_refs, 1) + len(self.rep))))

    # -- text to image --------------------------------------------------------------------------
    def _images_of(self, block: np.ndarray, aggregation: str) -> np.ndarray:
        """(queries x images) scores from a (queries x reference rows) block with left-out entries at -inf."""
        out = np.full((block.shape[0], self.n_images), -np.inf)
        kept = np.isfinite(block)
        counts = np.add.reduceat(kept.astype(np.int64), self.starts, axis=1)
        if aggregation == "max":
            values = np.maximum.reduceat(block, self.starts, axis=1)
        else:  # mean over the captions left in
            values = np.add.reduceat(np.where(kept, block, 0.0), self.starts, axis=1) / np.maximum(counts, 1)
        out[:, self.owners] = np.where(counts > 0, values, -np.inf)
        return out

    def text_to_image(self) -> pl.DataFrame:
        pieces = []
        step = self._step()
        bar = tqdm(total=len(self.t2i_queries), desc="oracle text-to-image", unit="query", disable=not self.settings.progress)
        for start in range(0, len(self.t2i_queries), step):
            rows = self.t2i_queries[start : start + step]
            block = self._row_scores(rows)
            relevant = np.zeros((len(rows), self.n_images), dtype=bool)
            relevant[np.arange(len(rows)), self.ref_image[rows]] = True
            for aggregation in self.aggregations:
                ids = self.caption_id[rows].astype(str)
                counts = tie_counts(self._images_of(block, aggregation), relevant, self.settings.tie_tolerance, ids)
                pieces.append(_frame("t2i", self.label, aggregation, ids, counts))
            bar.update(len(rows))
        bar.close()
        return pl.concat(pieces)

    # -- image to text --------------------------------------------------------------------------
    def image_to_text(self) -> pl.DataFrame:
        pieces = []
        step = max(1, self._step() // 5)  # about five caption rows per image
        bar = tqdm(total=len(self.query_images), desc="oracle image-to-text", unit="image", disable=not self.settings.progress)
        for start in range(0, len(self.query_images), step):
            images = self.query_images[start : start + step]
            rows = np.flatnonzero(np.isin(self.ref_image, images))  # the images' own captions: their representation
            block = self._row_scores(rows)
            kept = np.isfinite(block)
            starts = np.flatnonzero(np.r_[True, self.ref_image[rows][1:] != self.ref_image[rows][:-1]]) if len(rows) else np.zeros(0, int)
            owners = self.ref_image[rows][starts]
            relevant = self.ref_image[None, :] == images[:, None]
            position = {int(image): i for i, image in enumerate(images)}
            for aggregation in self.aggregations:
                scores = np.full((len(images), self.n_refs), -np.inf)
                if len(rows):
                    counts = np.add.reduceat(kept.astype(np.int64), starts, axis=0)
                    if aggregation == "max":
                        values = np.maximum.reduceat(block, starts, axis=0)
                    else:  # mean over the captions left in
                        values = np.add.reduceat(np.where(kept, block, 0.0), starts, axis=0) / np.maximum(counts, 1)
                    scores[[position[int(o)] for o in owners]] = np.where(counts > 0, values, -np.inf)
                ids = np.array([self.image_ids[i] for i in images], dtype=object).astype(str)
                ties = tie_counts(scores, relevant, self.settings.tie_tolerance, ids)
                pieces.append(_frame("i2t", self.label, aggregation, ids, ties))
            bar.update(len(images))
        bar.close()
        return pl.concat(pieces)


def evaluate_oracle(*, dataset: str, split: str, encoder_name: str, encoder_entry: dict, images_path: Path,
                    references_path: Path, reference_rep_dir: Path, settings: Settings, metrics_out: Path,
                    ranks_out: Path) -> pl.DataFrame:
    from ..encoders import load_representation

    images, references = pl.read_parquet(images_path), pl.read_parquet(references_path)
    rep = load_representation(encoder_name, encoder_entry, Path(reference_rep_dir))
    pieces = []
    for leave_out in ORACLE_PROMPTS:
        oracle = Oracle(images, references, split, rep, settings, leave_out)
        pieces += [oracle.text_to_image(), oracle.image_to_text()]
    stats, metrics = summarize(pl.concat(pieces), dataset=dataset, captioner=ORACLE_CAPTIONER, encoder=encoder_name,
                               n_images=oracle.n_images, kind=KIND_DIAGNOSTIC)
    for row in metrics.iter_rows(named=True):
        log.info("%s / oracle %s / %s / %s: mR %.2f (diagnostic: human captions, leave-one-out)", dataset, row["prompt"],
                 encoder_name, row["aggregation"], row["mR"])
    write_parquet(stats, ranks_out)
    write_parquet(metrics, metrics_out)
    return metrics
