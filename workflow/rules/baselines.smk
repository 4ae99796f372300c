# Reference points scored by the same protocol as the caption sets (see README, "Baselines"):
#   zero-shot CLIP image-text retrieval (rows `clip:<model>`, kind baseline) and the human-caption
#   leave-one-out oracle (rows `oracle`, kind diagnostic: kept out of figures and best-row picks).
# File paths use the bare model name; the ablation's captioner column says `clip:<model>`.


localrules:
    fetch_clip_model,


checkpoint fetch_clip_model:
    """Find a CLIP baseline's weights (and an open_clip checkpoint's tokenizer) once per run, or record
    that they cannot be had here: the plan then leaves the baseline out (see fetch_captioner_model)."""
    output:
        model_record_path("clip", "{model}"),
    params:
        model=lambda w: [config["baselines"]["clip"]["models"][w.model].get(k) for k in ("model", "tokenizer", "required")],
        retry=lambda w: retry_token(model_record_path("clip", w.model)),
    log:
        f"{R}/logs/fetch_clip_model/{{model}}.log",
    wildcard_constraints:
        model=one_of(CLIP_MODELS),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/fetch_clip_model.py"


rule clip_embed:
    """Embed the gallery images and the distinct human captions with one CLIP model (loaded once)."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        references=f"{R}/{{dataset}}/dataset/references.parquet",
        model=model_record_path("clip", "{model}"),
    output:
        directory(f"{R}/{{dataset}}/baselines/clip/{{model}}/embeddings"),
    log:
        f"{R}/logs/clip_embed/{{dataset}}/{{model}}.log",
    wildcard_constraints:
        model=one_of(CLIP_MODELS),
    threads: 2
    resources:
        mem_mb=lambda w: int(config["baselines"]["clip"]["models"][w.model].get("mem_mb", 8000)),
        gpu=lambda w: int(config["baselines"]["clip"]["models"][w.model].get("gpus", 0)),
        runtime=120,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/clip_embed.py"


rule clip_evaluate:
    """Both retrieval directions of zero-shot CLIP through the caption-set evaluator."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        references=f"{R}/{{dataset}}/dataset/references.parquet",
        embeddings=rules.clip_embed.output[0],
    params:
        # a changed threshold reruns the check only (the failures are listed in embeddings/quality.json)
        max_failure_share=lambda w: float(config["baselines"]["clip"]["models"][w.model].get("max_failure_share", 0.05)),
    output:
        metrics=f"{R}/{{dataset}}/baselines/clip/{{model}}/metrics.parquet",
        ranks=f"{R}/{{dataset}}/baselines/clip/{{model}}/ranks.parquet",
    log:
        f"{R}/logs/clip_evaluate/{{dataset}}/{{model}}.log",
    wildcard_constraints:
        model=one_of(CLIP_MODELS),
    threads: 1
    resources:
        mem_mb=lambda wildcards: int(config["evaluation"]["memory_mb"]) * 3 + 2000,
        runtime=30,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/clip_evaluate.py"


rule oracle_evaluate:
    """Leave-one-out human-caption oracle for one encoder (a diagnostic upper bound)."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        references=f"{R}/{{dataset}}/dataset/references.parquet",
        references_rep=rules.embed_references.output[0],
    output:
        metrics=f"{R}/{{dataset}}/baselines/oracle/{{encoder}}.metrics.parquet",
        ranks=f"{R}/{{dataset}}/baselines/oracle/{{encoder}}.ranks.parquet",
    log:
        f"{R}/logs/oracle_evaluate/{{dataset}}/{{encoder}}.log",
    threads: 2
    resources:
        mem_mb=lambda wildcards: int(config["evaluation"]["memory_mb"]) * 3 + 2000,
        runtime=60,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/oracle_evaluate.py"
