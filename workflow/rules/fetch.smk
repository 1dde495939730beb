# Materialize hub repositories under resources/ from the snapshot folder (or the hub). On a cluster these
# run on the login node, which has the snapshots or the internet; compute nodes need neither.
localrules: fetch_model, fetch_dataset


rule fetch_model:
    output:
        directory("resources/models/{model}"),
    params:
        model=lambda w: config["models"][w.model],
        snapshots=config["snapshots"],
    log:
        "results/logs/fetch_model/{model}.log",
    benchmark:
        "results/benchmarks/fetch_model/{model}.tsv"
    script:
        "../scripts/fetch_model.py"


rule fetch_dataset:
    output:
        directory("resources/datasets/{dataset}"),
    params:
        dataset=lambda w: dataset_source(w.dataset),
        snapshots=config["snapshots"],
    log:
        "results/logs/fetch_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_dataset/{dataset}.tsv"
    script:
        "../scripts/fetch_dataset.py"
