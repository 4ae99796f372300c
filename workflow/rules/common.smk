# Shared helpers: config validation, the experiment grid, output paths.
import re

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")


def _check_fusions():
    """Fusions name encoders of `encoders:`; a bad one stops the run at start with its key named."""
    import sys

    sys.path.insert(0, f"{workflow.basedir}/src")
    from trsllava.errors import TrsllavaError
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


def evaluation_params(wildcards):
    """What an evaluation computes beyond the caption table: a change reruns it."""
    return {
        "normalization": config.get("normalization", ["none"]),
        "caption_sets": config.get("caption_sets", {}),
        "query_bank": config["datasets"][wildcards.dataset].get("query_bank"),
    }

R = config["results"]
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
    """Metrics of the CLIP rows (each model x dataset with images) and of the oracle rows (each
    encoder x dataset), gathered into the ablation table beside the caption sets."""
    files = [f"{R}/{d}/baselines/clip/{m}/metrics.parquet" for d in clip_datasets() for m in CLIP_MODELS]
    if BASELINES.get("oracle", False):
        files += [f"{R}/{d}/baselines/oracle/{e}.metrics.parquet" for d in config["datasets"] for e in config["encoders"]]
    return files
