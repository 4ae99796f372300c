rule import_captions:
    """Read a caption set written elsewhere into the merged caption table, with a coverage report."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
    output:
        captions=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
        coverage=f"{R}/{{dataset}}/captions/{{captioner}}.coverage.json",
    log:
        f"{R}/logs/import_captions/{{dataset}}/{{captioner}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/import_captions.py"
