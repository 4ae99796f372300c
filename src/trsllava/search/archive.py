"""Locate and check what a workflow run built for one dataset x captioner x encoder.

Every missing piece is an error naming the file and the Snakemake target that builds it; the
encoder spec comes from the run's config and must be the one the cached embeddings were made with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

from ..encoders import build_encoder, load_representation
from ..encoders.base import Encoder, Representation
from ..encoders.lexical import BM25Encoder
from ..errors import TrsllavaError


@dataclass
class Archive:
    results: Path
    dataset: str
    captioner: str
    encoder_name: str
    encoder_entry: dict

    # -- paths ----------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.results / self.dataset

    @property
    def images_path(self) -> Path:
        return self.root / "dataset" / "images.parquet"

    @property
    def references_path(self) -> Path:
        return self.root / "dataset" / "references.parquet"

    @property
    def captions_path(self) -> Path:
        return self.root / "captions" / f"{self.captioner}.parquet"

    @property
    def index_dir(self) -> Path:
        return self.root / "index" / self.encoder_name / self.captioner

    @property
    def captions_rep_dir(self) -> Path:
        return self.root / "embeddings" / self.encoder_name / "captions" / self.captioner

    @property
    def references_rep_dir(self) -> Path:
        return self.root / "embeddings" / self.encoder_name / "references"

    @property
    def target(self) -> str:
        """The Snakemake target that builds everything a search needs."""
        return str(self.index_dir)

    def require(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise TrsllavaError(
                f"{what} not found: {path} (not built yet; build it with `snakemake --cores 2 {self.target}`, "
                f"or run the whole workflow)"
            )
        return path

    # -- loaded pieces --------------------------------------------------------------------------
    @cached_property
    def encoder(self) -> Encoder:
        return build_encoder(self.encoder_name, self.encoder_entry)

    @property
    def lexical(self) -> bool:
        return isinstance(self.encoder, BM25Encoder)

    @cached_property
    def images(self) -> pl.DataFrame:
        return pl.read_parquet(self.require(self.images_path, "gallery table"))

    @cached_property
    def references(self) -> pl.DataFrame:
        return pl.read_parquet(self.require(self.references_path, "human caption table"))

    @cached_property
    def captions(self) -> pl.DataFrame:
        return pl.read_parquet(self.require(self.captions_path, f"caption table of captioner '{self.captioner}'"))

    def representation(self, side: str) -> Representation:
        directory = self.captions_rep_dir if side == "captions" else self.references_rep_dir
        self.require(directory / "texts.parquet", f"{self.encoder_name} embeddings of the {side}")
        self._check_encoder(directory)
        return load_representation(self.encoder_name, self.encoder_entry, directory)

    @cached_property
    def captions_rep(self) -> Representation:
        return self.representation("captions")

    @cached_property
    def references_rep(self) -> Representation:
        return self.representation("references")

    def faiss_index(self):
        from ..index import INDEX_FILE, load_index

        self.require(self.index_dir / INDEX_FILE, f"FAISS index of {self.encoder_name} / {self.captioner}")
        return load_index(self.index_dir, use_gpu=False)

    def image_path(self, image_id: str) -> str | None:
        row = self.images.filter(pl.col("image_id") == image_id)
        return row["path"][0] if row.height else None

    def _check_encoder(self, directory: Path) -> None:
        """The config's encoder must be the one that made the cache (else scores mean nothing)."""
        recorded_file = directory / "encoder.json"
        if not recorded_file.is_file():
            return
        recorded = json.loads(recorded_file.read_text())
        for key in ("type", "model"):
            if key in recorded and recorded.get(key) != self.encoder_entry.get(key):
                raise TrsllavaError(
                    f"encoder '{self.encoder_name}': the config says {key} {self.encoder_entry.get(key)!r} but "
                    f"{directory} was built with {recorded.get(key)!r}; rebuild with `snakemake --cores 2 {self.target}` "
                    f"or pass the config of that run with --config"
                )


def _pick(kind: str, given: str | None, choices: list[str], where: str) -> str:
    if given is not None:
        if given not in choices:
            raise TrsllavaError(f"{kind} '{given}' is not defined under {where} (defined: {choices})")
        return given
    if len(choices) == 1:
        return choices[0]
    raise TrsllavaError(f"several {kind}s under {where} ({choices}): choose one with --{kind}")


def open_archive(config: dict, config_name: str, results: Path | None, dataset: str | None, captioner: str | None,
                 encoder: str | None) -> Archive:
    """Resolve the names (a name may be left out when the config defines exactly one) and check them."""
    results = Path(results or config.get("results", "results"))
    dataset = _pick("dataset", dataset, list(config.get("datasets") or {}), f"datasets in {config_name}")
    captioners = config.get("captioners") or {}
    built = [c for c in captioners if (results / dataset / "captions" / f"{c}.parquet").is_file()]
    if captioner is None and len(captioners) > 1 and len(built) == 1:
        captioner = built[0]  # the only caption set actually built for this dataset
    captioner = _pick("captioner", captioner, list(captioners), f"captioners in {config_name}")
    encoders = config.get("encoders") or {}
    if encoder is None and encoders:
        encoder = next(iter(encoders))  # the first configured encoder
    encoder = _pick("encoder", encoder, list(encoders), f"encoders in {config_name}")
    if not (results / dataset).is_dir():
        raise TrsllavaError(
            f"no results for dataset '{dataset}' under {results} (missing {results / dataset}); build them with "
            f"`snakemake --cores 2 {results / dataset / 'index' / encoder / captioner}`, or pass --results"
        )
    return Archive(results, dataset, captioner, encoder, dict(encoders[encoder]))
