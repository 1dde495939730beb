# One job per (method, dataset): latency, throughput, deployed size, inference memory and FLOPs. They depend
# on the architecture and the precision, not on the seed or the learning rate, so they are measured once, in
# repeated rounds (95% intervals over rounds), and a learning-rate change does not rerun them.
rule efficiency:
    input:
        model=lambda w: f"resources/models/{model_of(w.dataset)}",
        tokenized=lambda w: f"resources/tokenized/{w.dataset}/{model_of(w.dataset)}",
    output:
        "results/efficiency/{dataset}/{method}.json",
    params:
        run=efficiency_params,
    log:
        "results/logs/efficiency/{dataset}_{method}.log",
    benchmark:
        "results/benchmarks/efficiency/{dataset}_{method}.tsv"
    threads: THREADS
    resources:
        **torch_resources("efficiency"),
    script:
        "../scripts/efficiency.py"
