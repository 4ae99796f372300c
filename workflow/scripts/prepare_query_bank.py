import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(snakemake, steps.prepare_query_bank, dataset=snakemake.wildcards.dataset, out=snakemake.output[0])
