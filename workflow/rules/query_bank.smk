# The query bank of each dataset (hubness-aware scoring, config `normalization:`): human-written
# queries that are not the evaluated ones, embedded once per encoder.


rule prepare_query_bank:
    """The dataset's query bank (config datasets.<name>.query_bank; default: split train of its
    annotations, or the packaged RSICD train bank for the built-in sample)."""
    output:
        f"{R}/{{dataset}}/bank/queries.parquet",
    params:
        # another bank source reruns the bank and everything computed from it
        bank=lambda w: config["datasets"][w.dataset].get("query_bank"),
    log:
        f"{R}/logs/prepare_query_bank/{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/prepare_query_bank.py"


rule embed_query_bank:
    """Embed each distinct query bank text once per encoder."""
    input:
        table=rules.prepare_query_bank.output[0],
    output:
        directory(f"{R}/{{dataset}}/embeddings/{{encoder}}/bank"),
    log:
        f"{R}/logs/embed_query_bank/{{dataset}}/{{encoder}}.log",
    wildcard_constraints:
        encoder=one_of(config["encoders"]),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/retrieval.yaml"
    script:
        "../scripts/embed_query_bank.py"
