import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from pathlib import Path

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.figures,
    ablation=snakemake.input.ablation,
    manifest=snakemake.input.manifest,
    datasets=list(snakemake.params.datasets),
    out_dir=Path(snakemake.output[0]).parent,
)
