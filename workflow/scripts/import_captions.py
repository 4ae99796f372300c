import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.import_caption_set,
    dataset=snakemake.wildcards.dataset,
    captioner=snakemake.wildcards.captioner,
    images=snakemake.input.images,
    out=snakemake.output.captions,
    coverage_out=snakemake.output.coverage,
)
