# Shared helpers: config validation, the experiment grid, output paths.
import re

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")


def _check_fusions():
    """Fusions name encoders of `encoders:`; a bad one stops the run at start with its key named."""
    import sys

    sys.path.insert(0, f"{workflow.basedir}/src")
    import os

    from trsllava.errors import TrsllavaError
    from trsllava.evaluation.fusion_spec import check_fusions

    try:
        check_fusions(config)
    except TrsllavaError as error:
        raise WorkflowError(f"trsllava: {error}") from None


_check_fusions()

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


def evaluated_datasets():
    return sorted({d for d, _ in caption_sets()})


def n_shards(captioner):
    return int(config["captioners"][captioner].get("shards", 1))


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
    """Every (dataset, captioner, encoder) evaluation."""
    return [(d, c, e) for d, c in caption_sets() for e in config["encoders"]]


def all_indexes():
    return [f"{R}/{d}/index/{e}/{c}" for d, c, e in grid()]


def all_metrics():
    return [f"{R}/{d}/eval/{e}/{c}.metrics.parquet" for d, c, e in grid()] + fusion_metrics()


FUSIONS = list(config.get("fusions") or {})


def fusion_metrics():
    """Every (dataset, captioner, fusion) evaluation: rows of the ablation with encoder = the fusion."""
    return [f"{R}/{d}/eval/{f}/{c}.metrics.parquet" for d, c in caption_sets() for f in FUSIONS]


ABLATION_FORMATS = ["csv", "parquet", "md", "tex"]


def ablation_tables():
    return [f"{R}/ablation.{ext}" for ext in ABLATION_FORMATS]


def figure_files():
    datasets = sorted({d for d, _ in caption_sets()})
    names = [f"mr_heatmap_{d}" for d in datasets] + [f"recall_bars_{d}" for d in datasets]
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
    """Metrics of the CLIP rows (each model x dataset with images) and of the oracle rows (each
    encoder x dataset), gathered into the ablation table beside the caption sets."""
    files = [f"{R}/{d}/baselines/clip/{m}/metrics.parquet" for d in clip_datasets() for m in CLIP_MODELS]
    if BASELINES.get("oracle", False):
        files += [f"{R}/{d}/baselines/oracle/{e}.metrics.parquet" for d in config["datasets"] for e in config["encoders"]]
    return files
