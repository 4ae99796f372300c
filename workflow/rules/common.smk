# Shared helpers: config validation, the experiment grid, output paths.
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

R = config["results"]
NAME = "[A-Za-z0-9][A-Za-z0-9_.-]*"


wildcard_constraints:
    dataset=NAME,
    captioner=NAME,
    encoder=NAME,


def caption_sets():
    """(dataset, captioner) pairs: a captioner applies to the datasets it has captions for."""
    return [
        (dataset, captioner)
        for captioner, entry in config["captioners"].items()
        for dataset in config["datasets"]
        if dataset in entry["files"]
    ]


def grid():
    """Every (dataset, captioner, encoder) evaluation."""
    return [(d, c, e) for d, c in caption_sets() for e in config["encoders"]]


def all_indexes():
    return [f"{R}/{d}/index/{e}/{c}" for d, c, e in grid()]


def all_metrics():
    return [f"{R}/{d}/eval/{e}/{c}.metrics.parquet" for d, c, e in grid()]


ABLATION_FORMATS = ["csv", "parquet", "md", "tex"]


def ablation_tables():
    return [f"{R}/ablation.{ext}" for ext in ABLATION_FORMATS]


def figure_files():
    datasets = sorted({d for d, _ in caption_sets()})
    names = [f"mr_heatmap_{d}" for d in datasets] + [f"recall_bars_{d}" for d in datasets]
    names.append("vs_published")
    return [
        f"{R}/figures/{name}.{fmt}"
        for name in names
        for fmt in config["figures"]["formats"]
    ]
