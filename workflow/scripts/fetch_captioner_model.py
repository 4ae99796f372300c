import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(snakemake, steps.fetch_captioner_model, captioner=snakemake.wildcards.captioner, out=snakemake.output[0], attempt=snakemake.params.retry)
