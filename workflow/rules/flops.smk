# FLOPs per (method, dataset) with fvcore: independent of the seed, so counted once.
rule flops:
    input:
        model=lambda w: f"resources/models/{model_of(w.dataset)}",
        tokenized=lambda w: f"resources/tokenized/{w.dataset}/{model_of(w.dataset)}",
    output:
        "results/flops/{dataset}/{method}.json",
    params:
        run=flops_params,
    log:
        "results/logs/flops/{dataset}_{method}.log",
    benchmark:
        "results/benchmarks/flops/{dataset}_{method}.tsv"
    threads: THREADS
    resources:
        **torch_resources("evaluate"),
    script:
        "../scripts/flops.py"
