import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # the package of this checkout, also in conda envs

from trsllava import steps
from trsllava.snakemake_glue import run

run(snakemake, steps.join_caption_fields, captions=snakemake.input.captions, out=snakemake.output[0])
