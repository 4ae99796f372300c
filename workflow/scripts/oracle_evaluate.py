import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.oracle_evaluate,
    dataset=snakemake.wildcards.dataset,
    encoder_name=snakemake.wildcards.encoder,
    inputs=dict(snakemake.input.items()),
    metrics_out=snakemake.output.metrics,
    ranks_out=snakemake.output.ranks,
)
