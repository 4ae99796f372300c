import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.clip_embed,
    dataset=snakemake.wildcards.dataset,
    model_name=snakemake.wildcards.model,
    images=snakemake.input.images,
    references=snakemake.input.references,
    model=snakemake.input.model,
    out_dir=snakemake.output[0],
)
