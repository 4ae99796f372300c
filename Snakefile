# trsllava: training-free remote-sensing image retrieval as a Snakemake experiment.
#   snakemake --cores 2                 everything in config.yaml
#   snakemake --cores 2 figures         redraw tables and figures from existing evaluations
#   snakemake --report report.html      HTML report of tables and figures

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/captions.smk"
include: "workflow/rules/embeddings.smk"
include: "workflow/rules/query_bank.smk"
include: "workflow/rules/caption_sets.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/baselines.smk"


rule all:
    input:
        all_indexes(),
        ablation_tables(),
        figure_files(),
        f"{R}/manifest.json",
    default_target: True
