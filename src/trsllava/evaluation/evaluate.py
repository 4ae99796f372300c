"""Evaluate one dataset x captioner x encoder: every caption set and aggregation, both directions."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from ..atomic import write_parquet
from ..encoders import load_representation
from .caption_sets import caption_set_views
from .fusion import FusedProtocol, FusionSpec
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
    return _write(stats, dataset, captioner, encoder_name, protocol.n_images, metrics_out, ranks_out)


def summarize(stats: pl.DataFrame, *, dataset: str, captioner: str, encoder: str, n_images: int,
              kind: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-query stats with ranks, and one metrics row per (caption set, aggregation); ``kind``
    (baseline, diagnostic) marks rows that are not caption-set results."""
    stats = with_ranks(stats).with_columns(
        pl.lit(dataset).alias("dataset"), pl.lit(captioner).alias("captioner"), pl.lit(encoder).alias("encoder")
    )
    rows = []
    for (label, aggregation), part in stats.group_by(["caption_set", "aggregation"], maintain_order=True):
        rows.append(
            {
                "dataset": dataset,
                "captioner": captioner,
                "prompt": label,
                "encoder": encoder,
                "aggregation": aggregation,
                **recalls(part),
                "n_t2i_queries": part.filter(pl.col("direction") == "t2i").height,
                "n_i2t_queries": part.filter(pl.col("direction") == "i2t").height,
                "n_gallery_images": n_images,
                **({"kind": kind} if kind else {}),
            }
        )
    return stats, pl.DataFrame(rows)


def _write(stats: pl.DataFrame, dataset: str, captioner: str, encoder_name: str, n_images: int,
           metrics_out: Path, ranks_out: Path) -> pl.DataFrame:
    """Per-query ranks and one metrics row per (caption set, aggregation), written atomically."""
    stats, metrics = summarize(stats, dataset=dataset, captioner=captioner, encoder=encoder_name, n_images=n_images)
    write_parquet(stats, ranks_out)
    write_parquet(metrics, metrics_out)
    return metrics


def evaluate_fusion(
    *,
    dataset: str,
    split: str,
    captioner: str,
    spec: FusionSpec,
    encoder_entries: dict,
    images_path: Path,
    references_path: Path,
    captions_path: Path,
    reference_rep_dirs: list[Path],
    generated_rep_dirs: list[Path],
    settings: Settings,
    metrics_out: Path,
    ranks_out: Path,
) -> pl.DataFrame:
    """Reciprocal-rank fusion of ``spec.encoders`` (their cached representations, in that order),
    every caption set and aggregation, both directions; rows carry the fusion's name as encoder."""
    images = pl.read_parquet(images_path)
    references = pl.read_parquet(references_path)
    captions = pl.read_parquet(captions_path)
    protocols = [
        Protocol(
            images,
            references,
            split,
            load_representation(name, encoder_entries[name], reference_dir),
            load_representation(name, encoder_entries[name], generated_dir),
            settings,
        )
        for name, reference_dir, generated_dir in zip(spec.encoders, reference_rep_dirs, generated_rep_dirs, strict=True)
    ]
    sets = caption_set_views(captions)
    views = [[protocol.view(label, rows) for label, rows in sets] for protocol in protocols]
    fused = FusedProtocol(protocols, spec)
    log.info(
        "%s / %s / fusion %s (%s of %s, k=%g, weights %s): %d caption set(s)",
        dataset, captioner, spec.name, spec.method, "+".join(spec.encoders), spec.k, list(spec.weights), len(sets),
    )
    stats = pl.concat([fused.text_to_image(views), fused.image_to_text(views)])
    return _write(stats, dataset, captioner, spec.name, protocols[0].n_images, metrics_out, ranks_out)
