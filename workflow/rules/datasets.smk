rule prepare_dataset:
    """Normalise a dataset's annotations to typed image and reference-caption tables, and report
    what the annotations hold (blank captions, images without one, irregular counts, duplicates)."""
    output:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        references=f"{R}/{{dataset}}/dataset/references.parquet",
        report=report(
            f"{R}/{{dataset}}/dataset/report.json",
            caption="../report/dataset.rst",
            category="Dataset",
            labels={"dataset": "{dataset}", "report": "annotations"},
        ),
    log:
        f"{R}/logs/prepare_dataset/{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/prepare_dataset.py"
