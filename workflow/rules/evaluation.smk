rule evaluate:
    """Both retrieval directions for every caption set, aggregation and normalization of one
    captioner and encoder."""
    input:
        # joined caption sets (caption_sets.joined) and the query bank (normalization:), when asked
        unpack(joined_inputs),
        unpack(bank_inputs),
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        references=f"{R}/{{dataset}}/dataset/references.parquet",
        captions=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
        references_rep=rules.embed_references.output[0],
        captions_rep=rules.embed_captions.output[0],
    params:
        # editing the normalizations or the caption-set fusions reruns the evaluations
        extras=evaluation_params,
    output:
        metrics=f"{R}/{{dataset}}/eval/{{encoder}}/{{captioner}}.metrics.parquet",
        ranks=f"{R}/{{dataset}}/eval/{{encoder}}/{{captioner}}.ranks.parquet",
    log:
        f"{R}/logs/evaluate/{{dataset}}/{{captioner}}/{{encoder}}.log",
    wildcard_constraints:
        encoder=one_of(config["encoders"]),  # a fusion's rows share the eval/ folder (evaluate_fusion)
    threads: 2
    resources:
        mem_mb=lambda wildcards: int(config["evaluation"]["memory_mb"]) * 3 + 2000,
        runtime=60,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/evaluate.py"


rule evaluate_fusion:
    """Reciprocal-rank fusion of several encoders (config `fusions:`), from their cached embeddings or
    BM25 indexes: every caption set, aggregation and normalization (each encoder's normalised scores
    ranked), both directions; rows carry the fusion's name."""
    input:
        unpack(joined_inputs_fusion),
        unpack(bank_inputs_fusion),
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        references=f"{R}/{{dataset}}/dataset/references.parquet",
        captions=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
        references_reps=lambda w: [
            f"{R}/{w.dataset}/embeddings/{e}/references" for e in config["fusions"][w.fusion]["encoders"]
        ],
        captions_reps=lambda w: [
            f"{R}/{w.dataset}/embeddings/{e}/captions/{w.captioner}" for e in config["fusions"][w.fusion]["encoders"]
        ],
    params:
        # editing a fusion (weights, k) reruns its evaluation only
        fusion=lambda w: config["fusions"][w.fusion],
        extras=evaluation_params,
    output:
        metrics=f"{R}/{{dataset}}/eval/{{fusion}}/{{captioner}}.metrics.parquet",
        ranks=f"{R}/{{dataset}}/eval/{{fusion}}/{{captioner}}.ranks.parquet",
    log:
        f"{R}/logs/evaluate_fusion/{{dataset}}/{{captioner}}/{{fusion}}.log",
    wildcard_constraints:
        fusion=one_of(FUSIONS),
    threads: 2
    resources:
        mem_mb=lambda wildcards: int(config["evaluation"]["memory_mb"]) * 3 + 2000,
        runtime=60,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/evaluate_fusion.py"
