import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.merge_caption_shards,
    dataset=snakemake.wildcards.dataset,
    captioner=snakemake.wildcards.captioner,
    shards=list(snakemake.input.shards),
    images=snakemake.input.images,
    quality=snakemake.input.quality,
    out=snakemake.output.captions,
    coverage_out=snakemake.output.coverage,
)
