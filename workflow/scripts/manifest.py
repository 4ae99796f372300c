import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(
    snakemake,
    steps.write_run_manifest,
    workflow_dir=snakemake.params.workflow_dir,
    image_tables=list(snakemake.input.images),
    caption_tables=list(snakemake.input.captions),
    model_records=list(snakemake.params.model_records),
    out=snakemake.output.manifest,
    availability_out=snakemake.output.models,
)
