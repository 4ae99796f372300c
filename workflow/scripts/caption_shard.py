import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.caption_shard,
    dataset=snakemake.wildcards.dataset,
    captioner=snakemake.wildcards.captioner,
    shard=int(snakemake.wildcards.shard),
    shards=int(snakemake.wildcards.shards),
    images=snakemake.input.images,
    model=snakemake.input.model,
    progress=snakemake.params.progress,
    out=snakemake.output[0],
)
