# Shared helpers: config validation, the experiment grid, model availability, output paths.
import json
import re
import sys

from snakemake.utils import validate

sys.path.insert(0, f"{workflow.basedir}/src")  # the package of this checkout (also under --sdm conda)

from trsllava.errors import TrsllavaError
from trsllava.workflow_checks import check_snakemake_version

try:
    check_snakemake_version()
except TrsllavaError as error:
    raise WorkflowError(f"trsllava: {error}") from None

validate(config, schema="../schemas/config.schema.yaml")


def _check_fusions():
    """Fusions name encoders of `encoders:`; a bad one stops the run at start with its key named."""
    from trsllava.evaluation.fusion_spec import check_fusions

    try:
        check_fusions(config)
    except TrsllavaError as error:
        raise WorkflowError(f"trsllava: {error}") from None


_check_fusions()


def _checked_extras():
    """The normalizations (hubness-aware scoring) and caption-set fusions of config, checked at
    start: a bad entry stops the run before any job, with its key named."""
    from trsllava.errors import TrsllavaError
    from trsllava.evaluation.caption_set_spec import caption_set_fusion_specs, joined_enabled
    from trsllava.evaluation.normalization_spec import check_normalizations

    try:
        return check_normalizations(config), caption_set_fusion_specs(config), joined_enabled(config)
    except TrsllavaError as error:
        raise WorkflowError(f"trsllava: {error}") from None


NORMALIZATIONS, CAPTION_SET_FUSIONS, JOINED = _checked_extras()


def several_normalizations(config):
    from trsllava.evaluation.normalization_spec import several_normalizations as several

    return several(config)


def evaluation_params(wildcards):
    """What an evaluation computes beyond the caption table: a change reruns it."""
    return {
        "normalization": config.get("normalization", ["none"]),
        "caption_sets": config.get("caption_sets", {}),
        "query_bank": config["datasets"][wildcards.dataset].get("query_bank"),
    }

R = config["results"]


# One run at a time per results folder (trsllava.results_lock): Snakemake's own lock covers the
# working directory only, and two working directories may share one `results:`. Taken when jobs are
# about to run (not for -n, --unlock, --report, --lint, nor in cluster jobs: --no-hooks) and held by
# the Snakemake process until it exits, however it exits (success, error, SIGKILL): the kernel
# releases it, so no onsuccess/onerror handler is needed (or could be overridden by another one).
def _results_lock():
    import sys

    sys.path.insert(0, f"{workflow.basedir}/src")
    from trsllava.results_lock import ResultsLock

    return ResultsLock(R)


RESULTS_LOCK = _results_lock()


onstart:
    import os

    from trsllava.errors import TrsllavaError

    try:
        RESULTS_LOCK.acquire(os.getcwd())
    except TrsllavaError as error:
        raise WorkflowError(f"trsllava: {error}") from None


NAME = "[A-Za-z0-9][A-Za-z0-9_.-]*"


wildcard_constraints:
    dataset=NAME,
    captioner=NAME,
    encoder=NAME,


IMPORTED = [c for c, e in config["captioners"].items() if e["backend"] == "import"]
GENERATED = [c for c in config["captioners"] if c not in IMPORTED]


def one_of(names):
    """A wildcard constraint matching exactly these names (or nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def captioned_datasets(captioner):
    entry = config["captioners"][captioner]
    if entry["backend"] == "import":
        return [d for d in config["datasets"] if d in entry["files"]]
    return [d for d in entry.get("datasets", list(config["datasets"])) if d in config["datasets"]]


def caption_sets():
    """(dataset, captioner) pairs: imported captioners apply to the datasets they have files for,
    generating ones to their `datasets` (default: all)."""
    return [(d, c) for c in config["captioners"] for d in captioned_datasets(c)]


def captioning_env(wildcards):
    """The conda env of a captioner's jobs (--sdm conda): vLLM's for backend vllm, else transformers'
    (auto then runs transformers, which is what auto picks where vLLM is absent)."""
    backend = config["captioners"][wildcards.captioner]["backend"]
    family = "vllm" if backend == "vllm" else "transformers"
    return f"../../envs/captioning-{family}.yaml"


# -- embeddings (workflow/rules/embeddings.smk) -------------------------------------------------
def _vector_encoders():
    """Encoders embedding texts one by one (cached per text, sharded); BM25 is not one."""
    import sys

    sys.path.insert(0, f"{workflow.basedir}/src")
    from trsllava.encoders import is_vector_encoder

    return [name for name, entry in config["encoders"].items() if is_vector_encoder(entry)]


VECTOR_ENCODERS = _vector_encoders()
# the text tables a representation is made of: a dataset's human captions, or one caption set
TEXT_TABLE = rf"references|captions/{NAME}"
# encoder keys that change how a job runs, not its vectors: editing them reruns nothing (the second
# line: the openai encoder's transport and cost settings)
ENCODER_RUNTIME_KEYS = {"batch_size", "device", "shards", "gpus", "threads", "mem_mb", "cache_batch_size",
                        "concurrency", "retries", "backoff", "timeout", "api_key_env", "price_per_million_tokens"}


def encoder_spec(encoder):
    return {k: v for k, v in config["encoders"][encoder].items() if k not in ENCODER_RUNTIME_KEYS}


def encoder_setting(encoder, key, default):
    return int(config["encoders"][encoder].get(key, default))


def text_table(wildcards):
    """The table behind a `table` wildcard of embed_shard (references or captions/<captioner>)."""
    if wildcards.table == "references":
        return f"{R}/{wildcards.dataset}/dataset/references.parquet"
    return f"{R}/{wildcards.dataset}/captions/{wildcards.table.removeprefix('captions/')}.parquet"


def embedding_shards(table):
    """Input function: the shard reports a representation of `table` (a pattern over the rule's
    wildcards) is merged from; none for an encoder without per-text vectors (BM25), and none for one
    shard: the assembling job then fills the cache itself (as resumable, batch by batch), which saves
    a job that loads torch and the model for every table."""

    def shard_reports(wildcards):
        if wildcards.encoder not in VECTOR_ENCODERS:
            return []
        n = encoder_setting(wildcards.encoder, "shards", 1)
        if n == 1:
            return []
        name = table.format(**dict(wildcards.items()))
        return [f"{R}/{wildcards.dataset}/embeddings/{wildcards.encoder}/shards/{name}/shard-{i}-of-{n}.json" for i in range(n)]

    return shard_reports


def evaluated_datasets():
    return sorted({d for d, _ in caption_sets()})


def n_shards(captioner):
    return int(config["captioners"][captioner].get("shards", 1))


# -- model availability (checkpoints fetch_captioner_model and fetch_clip_model) ------------------
# A generating captioner or CLIP baseline whose model cannot be had here (no hub, not cached) is left
# out of the plan: these functions read the model records, so they may only be called from input
# functions (Snakemake re-evaluates them once the checkpoints have run).


RUN_STARTED = __import__("datetime").datetime.now().isoformat(timespec="microseconds")


def model_record_path(kind, name):
    return f"{R}/models/{name}.json" if kind == "captioner" else f"{R}/models/clip/{name}.json"


def retry_token(path):
    """A param of the fetch checkpoints (the record keeps it as `attempt`): the recorded value while
    the model is available, so the fetch never reruns by itself; a new value on every executing run
    while it is not, so a skipped model is tried again (Snakemake's params rerun trigger). Dry runs and
    --report see the recorded value: the checkpoint then counts as complete and they plan (or report)
    the run as it stands. Evaluated twice per job (planning, then execution after Snakemake removed
    the old record), hence one value per run (RUN_STARTED) rather than per call."""
    executing = workflow.executor_plugin is not None and not workflow.dryrun and not workflow.touch
    this_run = f"fetch of the run started {RUN_STARTED}"
    try:
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError):
        return this_run if executing else "not fetched yet"
    if recorded.get("available", True) or not executing:
        return recorded.get("attempt")
    return this_run


def fetched_models():
    """(kind, name) of every model the plan fetches: generating captioners with at least one dataset,
    CLIP models when some dataset has images."""
    models = [("captioner", c) for c in GENERATED if captioned_datasets(c)]
    if clip_datasets():
        models += [("clip", m) for m in CLIP_MODELS]
    return models


def model_records():
    """The records of every fetched model (runs the fetch checkpoints first; input functions only)."""
    records = []
    for kind, name in fetched_models():
        fetch = checkpoints.fetch_captioner_model if kind == "captioner" else checkpoints.fetch_clip_model
        path = fetch.get(**({"captioner": name} if kind == "captioner" else {"model": name})).output[0]
        with open(path, encoding="utf-8") as handle:
            records.append(json.load(handle))
    return records


def unavailable(kind):
    """Names of the models of ``kind`` that cannot be had here (input functions only)."""
    return {r["name"] for r in model_records() if r["kind"] == kind and not r["available"]}


def usable_caption_sets():
    """caption_sets() less those of captioners whose model cannot be had (input functions only)."""
    skipped = unavailable("captioner")
    return [(d, c) for d, c in caption_sets() if c not in skipped]


def required_missing():
    """True when a model marked `required: true` cannot be had: the run then does nothing more and
    fails at the end with one line per such model (onsuccess handler)."""
    return any(not r["available"] and r.get("required") for r in model_records())


def caption_shard_files(w):
    """The shard outputs of a generating captioner on a dataset (its configured number of shards)."""
    return [
        f"{R}/{w.dataset}/captions/{w.captioner}/shard-{i}-of-{n_shards(w.captioner)}.json"
        for i in range(n_shards(w.captioner))
    ]


def max_failure_share(w):
    """captioners.<name>.max_failure_share: the share of images that may fail before the merge refuses."""
    return float(config["captioners"][w.captioner].get("max_failure_share", 0.05))


def grid():
    """Every (dataset, captioner, encoder) evaluation (input functions only)."""
    return [(d, c, e) for d, c in usable_caption_sets() for e in config["encoders"]]


def all_indexes():
    return [f"{R}/{d}/index/{e}/{c}" for d, c, e in grid()]


def all_metrics():
    return [f"{R}/{d}/eval/{e}/{c}.metrics.parquet" for d, c, e in grid()] + fusion_metrics()


FUSIONS = list(config.get("fusions") or {})


def fusion_metrics():
    """Every (dataset, captioner, fusion) evaluation: rows of the ablation with encoder = the fusion."""
    return [f"{R}/{d}/eval/{f}/{c}.metrics.parquet" for d, c in usable_caption_sets() for f in FUSIONS]


ABLATION_FORMATS = ["csv", "parquet", "md", "tex"]


def ablation_tables():
    return [f"{R}/ablation.{ext}" for ext in ABLATION_FORMATS]


def figure_files():
    datasets = sorted({d for d, _ in caption_sets()})
    names = [f"mr_heatmap_{d}" for d in datasets] + [f"recall_bars_{d}" for d in datasets]
    if several_normalizations(config):
        names += [f"mr_normalization_{d}" for d in datasets]
    names.append("headline")
    return [
        f"{R}/figures/{name}.{fmt}"
        for name in names
        for fmt in config["figures"]["formats"]
    ]


# -- baselines (workflow/rules/baselines.smk) ----------------------------------------------------
BASELINES = config.get("baselines", {})
CLIP_MODELS = list(BASELINES.get("clip", {}).get("models", {}) or {})


def clip_datasets():
    """Datasets the CLIP baseline runs on: those with images (the builtin sample has them)."""
    return [d for d, e in config["datasets"].items() if e["format"] == "builtin" or e.get("images")]


def baseline_metrics():
    """Metrics of the CLIP rows (each available model x dataset with images) and of the oracle rows
    (each encoder x dataset), gathered into the ablation table beside the caption sets (input
    functions only)."""
    models = [m for m in CLIP_MODELS if m not in unavailable("clip")] if clip_datasets() else []
    files = [f"{R}/{d}/baselines/clip/{m}/metrics.parquet" for d in clip_datasets() for m in models]
    if BASELINES.get("oracle", False):
        files += [f"{R}/{d}/baselines/oracle/{e}.metrics.parquet" for d in config["datasets"] for e in config["encoders"]]
    return files


def ablation_inputs(wildcards):
    return all_metrics() + baseline_metrics()


def manifest_captions(wildcards):
    return [f"{R}/{d}/captions/{c}.parquet" for d, c in usable_caption_sets()]


def all_targets(wildcards):
    """The default target: everything, or only the model records when a required model is missing
    (the onsuccess handler then fails the run with one line)."""
    records = [model_record_path(kind, name) for kind, name in fetched_models()]
    if required_missing():
        return records
    return records + all_indexes() + ablation_tables() + figure_files() + [f"{R}/manifest.json"]


def model_record_paths():
    return [model_record_path(kind, name) for kind, name in fetched_models()]


def model_availability():
    """[kind, name, available] of every fetched model, read from the records already written (a param
    of the manifest, whose input functions have run the fetch checkpoints before)."""
    from trsllava.models.availability import read_records

    return [[r["kind"], r["name"], r["available"]] for r in read_records(model_record_paths())]


def finish_run(log):
    """onsuccess: the run summary on screen; a missing required model fails the run in one line."""
    from trsllava.models.availability import read_records, required_failures
    from trsllava.reporting.summary import run_summary

    failures = required_failures(read_records(model_record_paths()))
    if failures:
        sys.exit("\n".join(f"trsllava: {line}" for line in failures))
    print(run_summary(config, model_record_paths()), flush=True)


# input functions of query_bank.smk
def bank_needed():
    return any(spec.needs_query_bank for spec in NORMALIZATIONS)


def bank_inputs(wildcards):
    """The evaluate rule's query bank inputs, when a normalization uses the bank."""
    if not bank_needed():
        return {}
    return {
        "bank": f"{R}/{wildcards.dataset}/bank/queries.parquet",
        "bank_rep": f"{R}/{wildcards.dataset}/embeddings/{wildcards.encoder}/bank",
    }


def bank_inputs_fusion(wildcards):
    """The evaluate_fusion rule's: the bank and its representation for each fused encoder."""
    if not bank_needed():
        return {}
    return {
        "bank": f"{R}/{wildcards.dataset}/bank/queries.parquet",
        "bank_reps": [f"{R}/{wildcards.dataset}/embeddings/{e}/bank" for e in config["fusions"][wildcards.fusion]["encoders"]],
    }


# input functions of caption_sets.smk
def joined_inputs(wildcards):
    """The evaluate rule's joined caption sets and their representation (when caption_sets.joined)."""
    if not JOINED:
        return {}
    return {
        "joined": f"{R}/{wildcards.dataset}/captions_joined/{wildcards.captioner}.parquet",
        "joined_rep": f"{R}/{wildcards.dataset}/embeddings/{wildcards.encoder}/joined/{wildcards.captioner}",
    }


def joined_inputs_fusion(wildcards):
    if not JOINED:
        return {}
    return {
        "joined": f"{R}/{wildcards.dataset}/captions_joined/{wildcards.captioner}.parquet",
        "joined_reps": [
            f"{R}/{wildcards.dataset}/embeddings/{e}/joined/{wildcards.captioner}"
            for e in config["fusions"][wildcards.fusion]["encoders"]
        ],
    }
