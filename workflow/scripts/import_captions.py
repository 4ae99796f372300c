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
