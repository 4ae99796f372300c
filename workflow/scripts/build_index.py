import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.build_faiss_index,
    encoder_name=snakemake.wildcards.encoder,
    captions_rep=snakemake.input.captions_rep,
    references_rep=snakemake.input.references_rep,
    out_dir=snakemake.output[0],
)
