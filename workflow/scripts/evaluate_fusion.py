import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

inputs = {
    "images": snakemake.input.images,
    "references": snakemake.input.references,
    "captions": snakemake.input.captions,
    "references_reps": list(snakemake.input.references_reps),
    "captions_reps": list(snakemake.input.captions_reps),
}
# present when config asks for them: joined caption sets, the query bank of hubness-aware scoring
for key in ("joined", "bank"):
    if key in snakemake.input.keys():
        inputs[key] = snakemake.input[key]
for key in ("joined_reps", "bank_reps"):
    if key in snakemake.input.keys():
        value = snakemake.input[key]
        inputs[key] = [value] if isinstance(value, str) else list(value)

run(
    snakemake,
    steps.evaluate_fusion,
    dataset=snakemake.wildcards.dataset,
    captioner=snakemake.wildcards.captioner,
    fusion=snakemake.wildcards.fusion,
    inputs=inputs,
    metrics_out=snakemake.output.metrics,
    ranks_out=snakemake.output.ranks,
)
