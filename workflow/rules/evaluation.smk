rule evaluate:
    """Both retrieval directions for every caption set and aggregation of one captioner and encoder."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        references=f"{R}/{{dataset}}/dataset/references.parquet",
        captions=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
        references_rep=rules.embed_references.output[0],
        captions_rep=rules.embed_captions.output[0],
    output:
        metrics=f"{R}/{{dataset}}/eval/{{encoder}}/{{captioner}}.metrics.parquet",
        ranks=f"{R}/{{dataset}}/eval/{{encoder}}/{{captioner}}.ranks.parquet",
    log:
        f"{R}/logs/evaluate/{{dataset}}/{{captioner}}/{{encoder}}.log",
    threads: 2
    resources:
        mem_mb=lambda wildcards: int(config["evaluation"]["memory_mb"]) * 3 + 2000,
        runtime=60,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/evaluate.py"
