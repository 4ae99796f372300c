rule ablation:
    """Gather every evaluation into the ablation table (CSV, parquet, Markdown, LaTeX)."""
    input:
        all_metrics(),
        baseline_metrics(),
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
        f"{R}/ablation.parquet",
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
