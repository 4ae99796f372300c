rule ablation:
    """Gather every evaluation into the ablation table (CSV, parquet, Markdown, LaTeX)."""
    input:
        ablation_inputs,
    output:
        report(
            f"{R}/ablation.csv",
            caption="../report/ablation.rst",
            category="Ablation",
            labels={"table": "ablation (CSV)"},
        ),
        f"{R}/ablation.parquet",
        f"{R}/ablation.md",
        f"{R}/ablation.tex",
    log:
        f"{R}/logs/ablation.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/ablation.py"


rule draw_figures:
    """Heatmaps, recall bars and the comparison with published numbers, from the ablation table only."""
    input:
        ablation=f"{R}/ablation.parquet",
        manifest=f"{R}/manifest.json",
    params:
        # figure options are params: editing them reruns this rule only (Snakemake's params trigger)
        options=config["figures"],
        datasets=evaluated_datasets(),
    output:
        [
            report(path, caption="../report/figures.rst", category="Figures")
            for path in figure_files()
        ],
    log:
        f"{R}/logs/figures.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/figures.py"


rule figures:
    """Target: redraw tables and figures from existing evaluation results (nothing upstream reruns
    while the evaluations are up to date)."""
    input:
        ablation_tables(),
        figure_files(),
        f"{R}/manifest.json",


# A few file reads and a git call: not worth a cluster job; it also sees the checkout's git state.
localrules:
    manifest,


rule manifest:
    """results/manifest.json: config hash, git commit, package versions, captioning models and
    commits, encoders, dataset checksums and hardware; the figures carry its one-line summary."""
    input:
        images=[f"{R}/{d}/dataset/images.parquet" for d in evaluated_datasets()],
        captions=manifest_captions,
    output:
        manifest=report(f"{R}/manifest.json", caption="../report/manifest.rst", category="Run", labels={"file": "manifest"}),
        models=report(
            f"{R}/model_availability.csv", caption="../report/models.rst", category="Run", labels={"file": "models"}
        ),
    params:
        # the experiment, not its presentation: editing `figures:` does not rewrite the manifest
        experiment={key: value for key, value in config.items() if key != "figures"},
        workflow_dir=workflow.basedir,
        model_records=model_record_paths(),
        # which models this run has (a model becoming available, or no longer, rewrites the manifest)
        availability=lambda w: model_availability(),
    log:
        f"{R}/logs/manifest.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/manifest.py"
