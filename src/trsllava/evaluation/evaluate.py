"""Evaluate one dataset x captioner x encoder: every caption set and aggregation, both directions."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from ..atomic import write_parquet
from ..encoders import load_representation
from .caption_sets import caption_set_views
from .metrics import recalls, with_ranks
from .protocol import Protocol, Settings

log = logging.getLogger(__name__)

METRIC_KEYS = ("dataset", "captioner", "prompt", "encoder", "aggregation")


def evaluate(
    *,
    dataset: str,
    split: str,
    captioner: str,
    encoder_name: str,
    encoder_entry: dict,
    images_path: Path,
    references_path: Path,
    captions_path: Path,
    reference_rep_dir: Path,
    generated_rep_dir: Path,
    settings: Settings,
    metrics_out: Path,
    ranks_out: Path,
) -> pl.DataFrame:
    images = pl.read_parquet(images_path)
    references = pl.read_parquet(references_path)
    captions = pl.read_parquet(captions_path)
    protocol = Protocol(
        images,
        references,
        split,
        load_representation(encoder_name, encoder_entry, reference_rep_dir),
        load_representation(encoder_name, encoder_entry, generated_rep_dir),
        settings,
    )
    views = [protocol.view(label, rows) for label, rows in caption_set_views(captions)]
    log.info(
        "%s / %s / %s: %d caption set(s), %d text-to-image and %d image-to-text queries over %d images",
        dataset, captioner, encoder_name, len(views), len(protocol.t2i_queries), len(protocol.query_images), protocol.n_images,
    )
    stats = pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)])
    stats = with_ranks(stats).with_columns(
        pl.lit(dataset).alias("dataset"), pl.lit(captioner).alias("captioner"), pl.lit(encoder_name).alias("encoder")
    )
    rows = []
    for (label, aggregation), part in stats.group_by(["caption_set", "aggregation"], maintain_order=True):
        rows.append(
            {
                "dataset": dataset,
                "captioner": captioner,
                "prompt": label,
                "encoder": encoder_name,
                "aggregation": aggregation,
                **recalls(part),
                "n_t2i_queries": part.filter(pl.col("direction") == "t2i").height,
                "n_i2t_queries": part.filter(pl.col("direction") == "i2t").height,
                "n_gallery_images": protocol.n_images,
            }
        )
    metrics = pl.DataFrame(rows)
    write_parquet(stats, ranks_out)
    write_parquet(metrics, metrics_out)
    return metrics
