# One job per (method, dataset, seed): train, save the adapter (or full model), then evaluate the model while
# it is still in memory. Per-example predictions feed the significance tests.
if all(len(chunk) == 1 for chunk in SEED_CHUNKS):

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
            checkpoint_dir=lambda w: checkpoint_dir(w.dataset, w.method, w.seed),
        log:
            f"results/logs/train/{{dataset}}_{{method}}_seed{{seed}}.log",
        benchmark:
            f"results/benchmarks/train/{{dataset}}_{{method}}_seed{{seed}}.tsv"
        threads: THREADS
        resources:
            **torch_resources("train"),
        script:
            "../scripts/train.py"

else:
    # seeds_per_job > 1 (a local run): one job per (method, dataset) and chunk of seeds, each seed with the same
    # outputs as above. A rule per chunk, since a rule's outputs cannot hold a list of seeds as a wildcard.
    for _chunk in SEED_CHUNKS:
        _seeds = "-".join(map(str, _chunk))

        rule:
            name:
                f"train_seeds{_seeds.replace('-', '_')}"
            input:
                unpack(method_inputs),
                model=lambda w: f"resources/models/{model_of(w.dataset)}",
                tokenized=lambda w: f"resources/tokenized/{w.dataset}/{model_of(w.dataset)}",
            output:
                model=[directory(RUN.replace("{seed}", str(s)) + "/model") for s in _chunk],
                metrics=[RUN.replace("{seed}", str(s)) + "/train_metrics.json" for s in _chunk],
                evaluation=[RUN.replace("{seed}", str(s)) + "/eval_metrics.json" for s in _chunk],
                predictions=[RUN.replace("{seed}", str(s)) + "/predictions.csv" for s in _chunk],
            params:
                run=run_params,
                cost_per_device_hour=config["cost_per_device_hour"],
                seeds=_chunk,
                checkpoint_dirs=lambda w, seeds=_chunk: [checkpoint_dir(w.dataset, w.method, s) for s in seeds],
            log:
                f"results/logs/train/{{dataset}}_{{method}}_seeds{_seeds}.log",
            benchmark:
                f"results/benchmarks/train/{{dataset}}_{{method}}_seeds{_seeds}.tsv"
            threads: THREADS
            resources:
                **torch_resources("train"),
            script:
                "../scripts/train_seeds.py"

    onsuccess:
        # Every job this run needed completed: the finished seeds' stages (execution/seed_chunk.py) can go.
        from lorabench.execution.seed_chunk import remove_finished_stages

        metrics = f"{RUN}/train_metrics.json"
        remove_finished_stages((checkpoint_dir(d, m, s), metrics.format(dataset=d, method=m, seed=s))
                               for d, m in PAIRS for s in SEEDS)
