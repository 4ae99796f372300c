import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.evaluate_fusion,
    dataset=snakemake.wildcards.dataset,
    captioner=snakemake.wildcards.captioner,
    fusion=snakemake.wildcards.fusion,
    inputs={
        "images": snakemake.input.images,
        "references": snakemake.input.references,
        "captions": snakemake.input.captions,
        "references_reps": list(snakemake.input.references_reps),
        "captions_reps": list(snakemake.input.captions_reps),
    },
    metrics_out=snakemake.output.metrics,
    ranks_out=snakemake.output.ranks,
)
