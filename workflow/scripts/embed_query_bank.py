import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.embed_query_bank,
    encoder_name=snakemake.wildcards.encoder,
    table=snakemake.input.table,
    out_dir=snakemake.output[0],
)
