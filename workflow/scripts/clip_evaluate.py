import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.clip_evaluate,
    dataset=snakemake.wildcards.dataset,
    model_name=snakemake.wildcards.model,
    inputs=dict(snakemake.input.items()),
    metrics_out=snakemake.output.metrics,
    ranks_out=snakemake.output.ranks,
)
