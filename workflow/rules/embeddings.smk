rule embed_references:
    """Embed each distinct human caption of a dataset once per encoder (the text-to-image queries)."""
    input:
        table=f"{R}/{{dataset}}/dataset/references.parquet",
    output:
        directory(f"{R}/{{dataset}}/embeddings/{{encoder}}/references"),
    log:
        f"{R}/logs/embed_references/{{dataset}}/{{encoder}}.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/embed_texts.py"


rule embed_captions:
    """Embed each distinct text of a caption set once per encoder (the image side)."""
    input:
        table=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
    output:
        directory(f"{R}/{{dataset}}/embeddings/{{encoder}}/captions/{{captioner}}"),
    log:
        f"{R}/logs/embed_captions/{{dataset}}/{{captioner}}/{{encoder}}.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/embed_texts.py"


rule build_index:
    """FAISS index of a caption set's embeddings (approximate kinds report recall vs exact)."""
    input:
        captions_rep=rules.embed_captions.output[0],
        references_rep=rules.embed_references.output[0],
    output:
        directory(f"{R}/{{dataset}}/index/{{encoder}}/{{captioner}}"),
    log:
        f"{R}/logs/build_index/{{dataset}}/{{captioner}}/{{encoder}}.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/build_index.py"
