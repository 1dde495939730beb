"""A method's score under variants of config.yaml's budget, over seeds: how the default sizes were chosen.

    .venv/bin/python benchmarks/budget.py DATASET VARIANT [VARIANT ...] [--method lora] [--seeds 0 1 2]

A variant is JSON with any of three keys, each merged over config.yaml's entry:
  "dataset"  the dataset's settings (train_size, max_length, truncation, ...),
  "training" the training settings (batch_size, epochs, ...),
  "params"   the method's settings (dropout, lr, r, ...).
'{}' is config.yaml as shipped. For example:

    benchmarks/budget.py imdb '{}' '{"params": {"dropout": 0.0}}'
    benchmarks/budget.py sst2 '{"params": {"dropout": 0.0}, "dataset": {"train_size": 6000}}'

Every run goes through ``lorabench.execution.jobs.train_run``, what the pipeline's train job runs, in this process (no
Snakemake start-up per run); SparseLoRA's predictor is built as the pipeline's predictor rule builds it. It
prints, per variant, the mean over seeds with its 95% t-interval, the per-seed scores and the mean
training-loop time; the last line is ``best=VARIANT score=X`` (the highest
accuracy, or the lowest perplexity). Data and models are prepared under resources/bench/ from the
snapshots (LORABENCH_SNAPSHOTS, default ../shared/hf).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from lorabench.analysis.stats import t_interval
from lorabench.config import ConfigError
from lorabench.config.views import dataset_training, method_params_on
from lorabench.execution.jobs import train_run
from lorabench.methods import method_class
from lorabench.methods.checks import check_config
from lorabench.methods.sparselora.predictors import save_predictors

from common import REPO, SNAPSHOTS, prepare


def variant_config(raw: dict, dataset: str, method: str, variant: dict) -> dict:
    """config.yaml as written (``raw``) with the variant merged in, validated (a bad key is refused, named)."""
    unknown = set(variant) - {"dataset", "training", "params"}
    if unknown:
        raise SystemExit(f"budget.py: unknown variant key(s) {sorted(unknown)}; allowed: dataset, training, params")
    cfg = copy.deepcopy(raw)
    # Only this dataset and method run: a per-layer list for this model is not checked against the others.
    cfg["datasets"] = {dataset: cfg["datasets"][dataset]}
    cfg["methods"] = {method: cfg["methods"][method]}
    # A budget is judged on the final score: no held-out curve, nor the target read off it (curve_cost.py
    # sizes those), so a smaller variant is not refused for having fewer steps than the curve has points.
    cfg["evaluation"]["curve_points"] = 0
    for key in ("curve_points", "target"):
        cfg["datasets"][dataset].pop(key, None)
    cfg["datasets"][dataset].update(variant.get("dataset", {}))
    cfg["training"].update(variant.get("training", {}))
    params = variant.get("params", {})
    cfg["methods"][method].update(params)
    for_model = cfg["methods"][method].get("by_model", {}).get(cfg["datasets"][dataset]["model"], {})
    for key in params:  # the variant's settings win over config.yaml's for this model too
        for_model.pop(key, None)
    try:
        return check_config(cfg)
    except ConfigError as err:
        raise SystemExit(f"budget.py: variant {json.dumps(variant)}: {err}") from None


def run_variant(cfg: dict, dataset: str, method: str, seeds, cache: Path, work: Path) -> dict:
    model_dir, tok_dir = prepare(cfg, dataset, cache)  # tokens cached per version of the dataset's entry
    ds = cfg["datasets"][dataset]
    params = method_params_on(cfg, method, ds["model"])
    inputs = {}
    if getattr(method_class(params["type"]), "uses_predictor", False):  # SparseLoRA: what the predictor rule builds
        inputs["predictor"] = (cache / "predictors" / dataset /
                               f"{tok_dir.name}_{params['predictor']}_rank{params['predictor_rank']}.safetensors")
        if not inputs["predictor"].exists():
            inputs["predictor"].parent.mkdir(parents=True, exist_ok=True)
            save_predictors(model_dir, params["predictor_rank"], params["predictor"], inputs["predictor"], tok_dir)
    scores, loop_s = [], []
    for seed in seeds:
        out = Path(tempfile.mkdtemp(prefix=f"seed{seed}_", dir=work))
        metrics = train_run(
            model_dir=model_dir, tokenized_dir=tok_dir, out_model_dir=out / "model", out_metrics=out / "train.json",
            out_eval_metrics=out / "eval.json", out_predictions=out / "predictions.csv", dataset_name=dataset,
            dataset=ds, model_cfg=cfg["models"][ds["model"]], method_name=method, method_params=params,
            training=dataset_training(cfg, dataset), evaluation=cfg["evaluation"], seed=seed,
            threads=cfg["threads"], device=cfg["device"], precision=cfg["precision"], cost_per_device_hour={},
            method_inputs=inputs)
        evaluation = json.loads((out / "eval.json").read_text())
        scores.append(evaluation["accuracy"] if ds["task"] == "classification" else evaluation["perplexity"])
        loop_s.append(metrics["train_time_s"])
    mean, _, low, high = t_interval(scores)
    return {"score_mean": mean, "ci95_low": low, "ci95_high": high, "per_seed": [round(s, 4) for s in scores],
            "train_steps": metrics["train_steps"], "train_loop_s_mean": sum(loop_s) / len(loop_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("variants", nargs="+", help="JSON objects; '{}' is config.yaml as shipped")
    parser.add_argument("--method", default="lora", help="a key of config.yaml's methods (default lora)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=REPO / "resources" / "bench",
                        help="where models and data are prepared (default resources/bench)")
    args = parser.parse_args()
    raw = {**yaml.safe_load((REPO / "config.yaml").read_text()), "snapshots": str(SNAPSHOTS)}
    config = check_config(copy.deepcopy(raw))
    if args.dataset not in config["datasets"] or args.method not in config["methods"]:
        raise SystemExit(f"budget.py: dataset must be one of {list(config['datasets'])} and --method one of "
                         f"{list(config['methods'])}")
    variants = [json.loads(v) for v in args.variants]
    configs = [variant_config(raw, args.dataset, args.method, v) for v in variants]  # all refused up front
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for spec, cfg in zip(args.variants, configs):
            row = {"variant": spec, **run_variant(cfg, args.dataset, args.method, args.seeds, args.cache,
                                                  Path(work))}
            rows.append(row)
            print(f"{args.method} {args.dataset} {spec}: {row['score_mean']:.4f} "
                  f"({row['ci95_low']:.4f}-{row['ci95_high']:.4f}) seeds {row['per_seed']}, "
                  f"{row['train_steps']} steps, loop {row['train_loop_s_mean']:.1f} s", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".4f"))
    lower_is_better = config["datasets"][args.dataset]["task"] != "classification"
    best = table.sort_values("score_mean", ascending=lower_is_better).iloc[0]
    print(f"best={best['variant']} score={best['score_mean']:.4f}")


if __name__ == "__main__":
    main()
