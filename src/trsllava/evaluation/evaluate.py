"""Evaluate one dataset x captioner x encoder: every caption set, aggregation and normalization,
both directions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from collections.abc import Sequence

from ..atomic import write_parquet
from ..encoders import load_representation
from ..errors import TrsllavaError
from .caption_set_spec import CaptionSetFusionSpec
from .caption_sets import CaptionSetFusion, caption_set_views, joined_label
from .fusion import FusedProtocol, FusionSpec
from .hubness import Hubness, QueryBank
from .metrics import recalls, with_ranks
from .normalization_spec import NONE, NormalizationSpec
from .protocol import NO_NORMALIZATION, Protocol, Settings
from .representations import StackedRepresentation
from .truncation import TRUNCATION_COLUMNS, Truncation, fused_truncation, stacked_token_counts, view_truncation

log = logging.getLogger(__name__)

METRIC_KEYS = ("dataset", "captioner", "prompt", "encoder", "aggregation", "normalization")


@dataclass(frozen=True)
class Extras:
    """What an evaluation adds to the caption table: the joined caption sets (their table and, per
    encoder, their representation), weighted caption-set fusions, the normalizations and the query
    bank (its table and, per encoder, its representation)."""

    joined_path: Path | None = None
    caption_set_fusions: tuple[CaptionSetFusionSpec, ...] = ()
    normalizations: tuple[NormalizationSpec, ...] = ()
    bank_path: Path | None = None

    def joined(self) -> pl.DataFrame | None:
        if self.joined_path is None:
            return None
        table = pl.read_parquet(self.joined_path)
        return table if table.height else None

    @property
    def normalizing(self) -> bool:
        """Whether the evaluation goes through ``Hubness`` (anything but the single row ``none``)."""
        labels = [s.label for s in self.normalizations]
        return any(s.method != NONE for s in self.normalizations) or labels not in ([], [NO_NORMALIZATION])

    def bank(self, encoder_name: str, encoder_entry: dict, bank_rep_dir: Path | None) -> QueryBank | None:
        if not any(s.needs_query_bank for s in self.normalizations):
            return None
        if self.bank_path is None or bank_rep_dir is None:
            raise TrsllavaError("a normalization uses the query bank, but the evaluation was given no query bank")
        return QueryBank.from_table(pl.read_parquet(self.bank_path), load_representation(encoder_name, encoder_entry, bank_rep_dir))


def build_protocol(images: pl.DataFrame, references: pl.DataFrame, split: str, encoder_name: str, encoder_entry: dict,
                   reference_rep_dir: Path, generated_rep_dir: Path, joined: pl.DataFrame | None,
                   joined_rep_dir: Path | None, settings: Settings) -> Protocol:
    """The protocol of one encoder; the joined texts' representation, when there are joined texts,
    is stacked after the caption table's."""
    generated = load_representation(encoder_name, encoder_entry, generated_rep_dir)
    if joined is not None:
        if joined_rep_dir is None:
            raise TrsllavaError("joined caption sets were given without their embeddings")
        generated = StackedRepresentation([generated, load_representation(encoder_name, encoder_entry, joined_rep_dir)])
    return Protocol(images, references, split, load_representation(encoder_name, encoder_entry, reference_rep_dir),
                    generated, settings)


def build_views(protocol: Protocol, captions: pl.DataFrame, joined: pl.DataFrame | None,
                fusions: Sequence[CaptionSetFusionSpec] = ()) -> list:
    """Every caption set of the captioner as a view: caption_set_views, then the joined sets, then
    the weighted caption-set fusions whose sets all exist (others are skipped with a warning)."""
    views = [protocol.view(label, rows) for label, rows in caption_set_views(captions)]
    if joined is not None:
        for prompt in sorted(joined["prompt"].unique().to_list()):
            views.append(protocol.view(joined_label(prompt), joined.filter(pl.col("prompt") == prompt), part=1))
    by_label = {view.label: view for view in views}
    for spec in fusions:
        missing = [label for label in spec.sets if label not in by_label]
        if missing:
            log.warning("caption set fusion %s skipped: no caption set %s here (caption sets: %s)", spec.name, missing, sorted(by_label))
            continue
        if spec.name in by_label:
            raise TrsllavaError(f"config: caption_sets.fusions.{spec.name}: the name is already a caption set's; choose another")
        views.append(CaptionSetFusion(spec.name, tuple(by_label[label] for label in spec.sets), spec.weights))
    return views


def truncation_of(protocol: Protocol, views: list, generated_rep_dir: Path, joined_rep_dir: Path | None,
                  reference_rep_dir: Path) -> Truncation:
    """Per caption set, its distinct texts and the gallery's distinct reference captions that the
    encoder cut at its token limit (evaluation.truncation), from the token lengths saved with the
    representations (the joined texts' stacked after the caption table's, as in build_protocol)."""
    stacked = isinstance(protocol.generated_rep, StackedRepresentation)  # the joined texts after the caption table's
    generated = stacked_token_counts([generated_rep_dir, joined_rep_dir] if stacked else [generated_rep_dir])
    return view_truncation(views, generated, stacked_token_counts([reference_rep_dir]), protocol.ref_text)


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
    extras: Extras = Extras(),
    joined_rep_dir: Path | None = None,
    bank_rep_dir: Path | None = None,
) -> pl.DataFrame:
    images = pl.read_parquet(images_path)
    references = pl.read_parquet(references_path)
    captions = pl.read_parquet(captions_path)
    joined = extras.joined()
    protocol = build_protocol(images, references, split, encoder_name, encoder_entry, reference_rep_dir,
                              generated_rep_dir, joined, joined_rep_dir, settings)
    views = build_views(protocol, captions, joined, extras.caption_set_fusions)
    log.info(
        "%s / %s / %s: %d caption set(s), %d text-to-image and %d image-to-text queries over %d images",
        dataset, captioner, encoder_name, len(views), len(protocol.t2i_queries), len(protocol.query_images), protocol.n_images,
    )
    hubness = None
    if extras.normalizing:
        hubness = Hubness.prepare(protocol, views, extras.normalizations, extras.bank(encoder_name, encoder_entry, bank_rep_dir))
    stats = pl.concat([protocol.text_to_image(views, hubness), protocol.image_to_text(views, hubness)])
    truncation = truncation_of(protocol, views, generated_rep_dir, joined_rep_dir, reference_rep_dir)
    return _write(stats, dataset, captioner, encoder_name, protocol.n_images, metrics_out, ranks_out, truncation)


def summarize(stats: pl.DataFrame, *, dataset: str, captioner: str, encoder: str, n_images: int,
              kind: str | None = None, truncation: Truncation | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-query stats with ranks, and one metrics row per (caption set, aggregation,
    normalization); ``kind`` (baseline, diagnostic) marks rows that are not caption-set results;
    ``truncation`` (per caption set label, evaluation.truncation) fills the Int64 columns
    truncated_texts and truncated_references, null where it has no count."""
    truncation = truncation or {}
    stats = with_ranks(stats).with_columns(
        pl.lit(dataset).alias("dataset"), pl.lit(captioner).alias("captioner"), pl.lit(encoder).alias("encoder")
    )
    if "normalization" not in stats.columns:
        stats = stats.with_columns(pl.lit(NO_NORMALIZATION).alias("normalization"))
    rows = []
    for (label, aggregation, normalization), part in stats.group_by(["caption_set", "aggregation", "normalization"],
                                                                     maintain_order=True):
        rows.append(
            {
                "dataset": dataset,
                "captioner": captioner,
                "prompt": label,
                "encoder": encoder,
                "aggregation": aggregation,
                "normalization": normalization,
                **recalls(part),
                "n_t2i_queries": part.filter(pl.col("direction") == "t2i").height,
                "n_i2t_queries": part.filter(pl.col("direction") == "i2t").height,
                "n_gallery_images": n_images,
                **{column: truncation.get(label, {}).get(column) for column in TRUNCATION_COLUMNS},
                **({"kind": kind} if kind else {}),
            }
        )
    return stats, pl.DataFrame(rows, schema_overrides=dict.fromkeys(TRUNCATION_COLUMNS, pl.Int64))


def _write(stats: pl.DataFrame, dataset: str, captioner: str, encoder_name: str, n_images: int,
           metrics_out: Path, ranks_out: Path, truncation: Truncation | None = None) -> pl.DataFrame:
    """Per-query ranks and one metrics row per (caption set, aggregation), written atomically."""
    stats, metrics = summarize(stats, dataset=dataset, captioner=captioner, encoder=encoder_name, n_images=n_images,
                               truncation=truncation)
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
    extras: Extras = Extras(),
    joined_rep_dirs: list[Path] | None = None,
    bank_rep_dirs: list[Path] | None = None,
) -> pl.DataFrame:
    """Reciprocal-rank fusion of ``spec.encoders`` (their cached representations, in that order),
    every caption set, aggregation and normalization (each encoder's normalised scores are ranked),
    both directions; rows carry the fusion's name as encoder."""
    images = pl.read_parquet(images_path)
    references = pl.read_parquet(references_path)
    captions = pl.read_parquet(captions_path)
    joined = extras.joined()
    n = len(spec.encoders)
    joined_rep_dirs = joined_rep_dirs or [None] * n
    bank_rep_dirs = bank_rep_dirs or [None] * n
    protocols, views, hubness, truncations = [], [], [], []
    for index, name in enumerate(spec.encoders):
        protocol = build_protocol(images, references, split, name, encoder_entries[name], reference_rep_dirs[index],
                                  generated_rep_dirs[index], joined, joined_rep_dirs[index], settings)
        protocols.append(protocol)
        views.append(build_views(protocol, captions, joined, extras.caption_set_fusions))
        truncations.append(truncation_of(protocol, views[-1], generated_rep_dirs[index], joined_rep_dirs[index],
                                         reference_rep_dirs[index]))
        if extras.normalizing:
            hubness.append(Hubness.prepare(protocol, views[-1], extras.normalizations,
                                           extras.bank(name, encoder_entries[name], bank_rep_dirs[index])))
    fused = FusedProtocol(protocols, spec)
    log.info(
        "%s / %s / fusion %s (%s of %s, k=%g, weights %s): %d caption set(s)",
        dataset, captioner, spec.name, spec.method, "+".join(spec.encoders), spec.k, list(spec.weights), len(views[0]),
    )
    hubness = hubness or None
    stats = pl.concat([fused.text_to_image(views, hubness), fused.image_to_text(views, hubness)])
    return _write(stats, dataset, captioner, spec.name, protocols[0].n_images, metrics_out, ranks_out,
                  fused_truncation(truncations))
