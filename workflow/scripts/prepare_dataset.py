from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.prepare_dataset,
    dataset=snakemake.wildcards.dataset,
    images_out=snakemake.output.images,
    references_out=snakemake.output.references,
)
