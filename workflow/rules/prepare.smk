# Tokenize once per (dataset, model); every method and seed reads the same cached subsets.
rule tokenize:
    input:
        model="resources/models/{model}",
        raw="resources/datasets/{dataset}",
    output:
        directory("resources/tokenized/{dataset}/{model}"),
    params:
        dataset=lambda w: dataset_slice(w.dataset),
    log:
        "results/logs/tokenize/{dataset}_{model}.log",
    benchmark:
        "results/benchmarks/tokenize/{dataset}_{model}.tsv"
    threads: 1
    script:
        "../scripts/tokenize.py"
