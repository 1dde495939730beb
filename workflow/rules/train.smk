# One job per (method, dataset, seed): train, save the adapter (or full model), then evaluate the model while
# it is still in memory. Per-example predictions feed the significance tests.
rule train:
    input:
        unpack(method_inputs),
        model=lambda w: f"resources/models/{model_of(w.dataset)}",
        tokenized=lambda w: f"resources/tokenized/{w.dataset}/{model_of(w.dataset)}",
    output:
        model=directory(f"{RUN}/model"),
        metrics=f"{RUN}/train_metrics.json",
        evaluation=f"{RUN}/eval_metrics.json",
        predictions=f"{RUN}/predictions.csv",
    params:
        run=run_params,
        cost_per_device_hour=config["cost_per_device_hour"],
        # Not an output: Snakemake deletes a failed job's outputs, but a killed run must find its checkpoint.
        checkpoint_dir=lambda w: f"results/checkpoints/{w.dataset}/{w.method}/seed{w.seed}",
    log:
        f"results/logs/train/{{dataset}}_{{method}}_seed{{seed}}.log",
    benchmark:
        f"results/benchmarks/train/{{dataset}}_{{method}}_seed{{seed}}.tsv"
    threads: THREADS
    resources:
        **torch_resources("train"),
    script:
        "../scripts/train.py"
