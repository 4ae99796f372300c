# trsllava: training-free remote-sensing image retrieval as a Snakemake experiment.
#   snakemake --cores 2                         the shipped experiment, config.yaml
#   snakemake --cores 2 --configfile my.yaml    your experiment: exactly what my.yaml names
#   snakemake --cores 2 figures                 redraw tables and figures from existing evaluations
#   snakemake --report results/report.html      HTML report of tables and figures

from snakemake.utils import min_version

min_version("9.0")


# The shipped experiment is config.yaml. A file given with --configfile replaces it instead of being
# merged into it (Snakemake's default), so that a user's experiment runs only what it names; the
# schema fills in the defaults either way. To build on config.yaml, name both: --configfile config.yaml my.yaml
if not workflow.overwrite_configfiles:

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
        all_targets,
    default_target: True


onsuccess:
    finish_run(log)
