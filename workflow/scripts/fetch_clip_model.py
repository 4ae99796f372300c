import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(snakemake, steps.fetch_clip_model, model_name=snakemake.wildcards.model, out=snakemake.output[0], attempt=snakemake.params.retry)
