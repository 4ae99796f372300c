import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.prepare_dataset,
    dataset=snakemake.wildcards.dataset,
    images_out=snakemake.output.images,
    references_out=snakemake.output.references,
    report_out=snakemake.output.report,
)
