# Derived caption sets (config `caption_sets:`): the joined database text of multi-field prompts
# (<prompt>/joined), written apart from the caption table and embedded apart, so that no existing
# caption set changes (BM25 keeps the statistics of the texts it indexed).


rule join_caption_fields:
    """Per variant, the fields of each multi-field prompt joined into one text (empty table when the
    captioner has no such prompt)."""
    input:
        captions=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
    output:
        f"{R}/{{dataset}}/captions_joined/{{captioner}}.parquet",
    log:
        f"{R}/logs/join_caption_fields/{{dataset}}/{{captioner}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/join_caption_fields.py"


rule embed_joined_captions:
    """Embed each distinct joined text of a captioner once per encoder."""
    input:
        table=rules.join_caption_fields.output[0],
    output:
        directory(f"{R}/{{dataset}}/embeddings/{{encoder}}/joined/{{captioner}}"),
    log:
        f"{R}/logs/embed_joined_captions/{{dataset}}/{{captioner}}/{{encoder}}.log",
    wildcard_constraints:
        encoder=one_of(config["encoders"]),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/embed_joined_captions.py"
