rule import_captions:
    """Read a caption set written elsewhere into the merged caption table, with a coverage report."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
    output:
        captions=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
        coverage=report(
            f"{R}/{{dataset}}/captions/{{captioner}}.coverage.json",
            caption="../report/coverage.rst",
            category="Caption quality",
            subcategory="{dataset}",
            labels={"captioner": "{captioner}", "report": "coverage"},
        ),
    log:
        f"{R}/logs/import_captions/{{dataset}}/{{captioner}}.log",
    wildcard_constraints:
        captioner=one_of(IMPORTED),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/import_captions.py"


# Runs where Snakemake runs, not as a cluster job: login nodes usually reach the hub, compute nodes
# often do not; the shard jobs then load the fetched folder from the shared cache.
localrules:
    fetch_captioner_model,


checkpoint fetch_captioner_model:
    """Find the captioner's model (a local folder, the cache, or a download from the hub) once, before
    its shard jobs, and record its folder and commit, or that it cannot be had here: the plan then
    leaves the captioner out (a checkpoint: the input functions of common.smk read the record)."""
    output:
        model_record_path("captioner", "{captioner}"),
    params:
        # a changed model or revision in config.yaml fetches again (Snakemake's params rerun trigger)
        model=lambda w: [config["captioners"][w.captioner].get(k) for k in ("model", "revision", "required")],
        # a model skipped last time is tried again on every run (a changing param reruns the job)
        retry=lambda w: retry_token(model_record_path("captioner", w.captioner)),
    log:
        f"{R}/logs/fetch_captioner_model/{{captioner}}.log",
    wildcard_constraints:
        captioner=one_of(GENERATED),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    conda:
        captioning_env
    script:
        "../scripts/fetch_captioner_model.py"


rule caption_shard:
    """Caption one shard of a dataset's images with every prompt of a captioner (model loaded once).
    Resumable: finished images are kept in the progress file, outside Snakemake's outputs, so a
    failed or killed job keeps them and its rerun continues where it stopped."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        model=model_record_path("captioner", "{captioner}"),
    output:
        f"{R}/{{dataset}}/captions/{{captioner}}/shard-{{shard}}-of-{{shards}}.json",
    params:
        progress=lambda w: f"{R}/{w.dataset}/captions/{w.captioner}/progress/shard-{w.shard}-of-{w.shards}.jsonl",
    log:
        f"{R}/logs/caption_shard/{{dataset}}/{{captioner}}/shard-{{shard}}-of-{{shards}}.log",
    wildcard_constraints:
        captioner=one_of(GENERATED),
        shard=r"\d+",
        shards=r"\d+",
    threads: 2
    resources:
        mem_mb=lambda w: int(config["captioners"][w.captioner].get("mem_mb", 16000)),
        gpu=lambda w: int(config["captioners"][w.captioner].get("gpus", 0)),
        runtime=240,
    conda:
        captioning_env
    script:
        "../scripts/caption_shard.py"


rule caption_quality:
    """The quality report of a captioner's shards: statuses per prompt, failures by image, and the
    images that could not be captioned (unreadable file, backend error) with their reasons. Its own
    job, so that the report stays when merge_captions refuses too many failed images."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        shards=caption_shard_files,
    output:
        quality=report(
            f"{R}/{{dataset}}/captions/{{captioner}}.quality.json",
            caption="../report/quality.rst",
            category="Caption quality",
            subcategory="{dataset}",
            labels={"captioner": "{captioner}", "report": "quality"},
        ),
    params:
        max_failure_share=max_failure_share,
    log:
        f"{R}/logs/caption_quality/{{dataset}}/{{captioner}}.log",
    wildcard_constraints:
        captioner=one_of(GENERATED),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        captioning_env
    script:
        "../scripts/caption_quality.py"


rule merge_captions:
    """Gather a captioner's shards into the caption table, with a coverage report; fails in one line
    naming the quality report when more than max_failure_share of the images could not be captioned."""
    input:
        images=f"{R}/{{dataset}}/dataset/images.parquet",
        shards=caption_shard_files,
        quality=f"{R}/{{dataset}}/captions/{{captioner}}.quality.json",
    output:
        captions=f"{R}/{{dataset}}/captions/{{captioner}}.parquet",
        coverage=report(
            f"{R}/{{dataset}}/captions/{{captioner}}.coverage.json",
            caption="../report/coverage.rst",
            category="Caption quality",
            subcategory="{dataset}",
            labels={"captioner": "{captioner}", "report": "coverage"},
        ),
    params:
        # a changed threshold reruns the check (and the quality report that records it)
        max_failure_share=max_failure_share,
    log:
        f"{R}/logs/merge_captions/{{dataset}}/{{captioner}}.log",
    wildcard_constraints:
        captioner=one_of(GENERATED),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        captioning_env
    script:
        "../scripts/merge_captions.py"
