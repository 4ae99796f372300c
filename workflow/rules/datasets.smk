rule prepare_dataset:
    """Normalise a dataset's annotations to typed image and reference-caption tables."""
    output:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        references=f"{R}/{{dataset}}/dataset/references.parquet",
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
