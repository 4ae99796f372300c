# Embedding, like captioning, fans out: a vector encoder's texts are embedded by `shards` jobs
# (embed_shard) into the shared per-text cache (config `embedding_cache`), then one job per text
# table assembles the representation from the cache (embed_references, embed_captions). BM25 has
# no per-text vectors: it indexes the whole table in that one job.


rule embed_shard:
    """Embed one shard of a text table's distinct texts (chosen by text hash) into the shared
    embedding cache. Resumable: every finished batch is a cache chunk outside Snakemake's outputs, so
    a killed job keeps it, and its rerun (or any caption set or dataset sharing the texts) skips it."""
    input:
        table=text_table,
    output:
        f"{R}/{{dataset}}/embeddings/{{encoder}}/shards/{{table}}/shard-{{shard}}-of-{{shards}}.json",
    params:
        # a changed model, backend, prompt... reruns the shards (which then find what is still cached)
        encoder=lambda w: encoder_spec(w.encoder),
    log:
        f"{R}/logs/embed_shard/{{dataset}}/{{encoder}}/{{table}}/shard-{{shard}}-of-{{shards}}.log",
    wildcard_constraints:
        encoder=one_of(VECTOR_ENCODERS),
        table=TEXT_TABLE,
        shard=r"\d+",
        shards=r"\d+",
    threads: lambda w: encoder_setting(w.encoder, "threads", 2)
    resources:
        mem_mb=lambda w: encoder_setting(w.encoder, "mem_mb", 4000),
        gpu=lambda w: encoder_setting(w.encoder, "gpus", 0),
        runtime=120,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/embed_shard.py"


rule embed_references:
    """The representation of each distinct human caption of a dataset per encoder (the text-to-image
    queries, the image-to-text documents)."""
    input:
        table=f"{R}/{{dataset}}/dataset/references.parquet",
        shards=embedding_shards("references"),
    output:
        directory(f"{R}/{{dataset}}/embeddings/{{encoder}}/references"),
    params:
        encoder=lambda w: encoder_spec(w.encoder),
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
    """The representation of each distinct text of a caption set per encoder (the image side)."""
    input:
        table=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
        shards=embedding_shards("captions/{captioner}"),
    output:
        directory(f"{R}/{{dataset}}/embeddings/{{encoder}}/captions/{{captioner}}"),
    params:
        encoder=lambda w: encoder_spec(w.encoder),
    log:
        f"{R}/logs/embed_captions/{{dataset}}/{{captioner}}/{{encoder}}.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
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
