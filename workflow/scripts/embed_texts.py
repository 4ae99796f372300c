from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.embed_texts,
    encoder_name=snakemake.wildcards.encoder,
    table=snakemake.input.table,
    out_dir=snakemake.output[0],
)
