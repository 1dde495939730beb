# Evaluate each trained run on the fixed evaluation subset; per-example outputs feed the significance tests.
rule evaluate:
    input:
        model=lambda w: f"resources/models/{model_of(w.dataset)}",
        tokenized=lambda w: f"resources/tokenized/{w.dataset}/{model_of(w.dataset)}",
        trained=f"{RUN}/model",
    output:
        metrics=f"{RUN}/eval_metrics.json",
        predictions=f"{RUN}/predictions.csv",
    params:
        run=run_params,
        evaluation=config["evaluation"],
    log:
        f"results/logs/evaluate/{{dataset}}_{{method}}_seed{{seed}}.log",
    benchmark:
        f"results/benchmarks/evaluate/{{dataset}}_{{method}}_seed{{seed}}.tsv"
    threads: THREADS
    resources:
        **torch_resources("evaluate"),
    script:
        "../scripts/evaluate.py"
