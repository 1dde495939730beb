"""What does the held-out curve cost, and how precise is one point?   .venv/bin/python benchmarks/curve_cost.py

For each dataset of a config (default config.yaml), for each method named (default lora and full_ft, the
cheapest and the dearest step per token), in one process: the config's model and method as its train job
builds them, a training step (the trainer's own forward_backward and optimizer_step, batches as the trainer
makes them) and one curve point (the curve's own HeldoutCurve.point on as many held-out examples as the curve
will have: its batches, sorted by length, pad as the real ones do), timed alternately ABAB so that a busy
machine slows both alike. From the medians and the config's plan:

- ``curve_share``: curve evaluation time over the training loop's time, for the dataset's curve points and
  holdout_size (or the sizes given with --holdout and --points);
- ``point_se``: one point's standard error: accuracy sqrt(p(1-p)/n) at p = --accuracy (0.80 by default; at
  0.5, early in training, it is 1.25x larger); perplexity: the SE the curve point itself reports (perplexity x
  sd(window mean NLL) / sqrt(n)), at the last timed point, a few steps into training;
- ``se_limit``: 2.5 accuracy points, or its perplexity equivalent: 2.5 x the config's perplexity
  equivalence margin (a point of accuracy and 0.5 perplexity are the margins that "do not matter").

The last line, ``curve_share_<method>=X ... se_within_limit=<datasets>``, gives per method the curves' time
over the training loops' time summed over the datasets (one run of each: the default run's budget is 10%),
and the datasets whose point SE is within the limit.

The held-out examples are the dataset's held-out slice where the tokenized data have one, else its eval
part (the same distribution of lengths). Needs resources/ of the config (the script says how to make them).
Results of dated runs: docs/measurements/heldout-curve.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from lorabench.config import curve_points, dataset_entry, dataset_training, method_params_on, validate_config
from lorabench.execution.curve import HeldoutCurve
from lorabench.execution.settings import TrainingSettings
from lorabench.execution.trainer import forward_backward, optimizer_step, plan_steps
from lorabench.loading.data import EVAL, HELDOUT, TRAIN, Collator, length_grouped_batches, load_tokenized
from lorabench.loading.models import ModelLoader
from lorabench.methods import build_method
from lorabench.runtime.device import device_name, seed_everything, set_threads
from lorabench.runtime.precision import resolve_precision

CPU = torch.device("cpu")


def _inputs(config: dict, dataset: str) -> tuple[Path, Path]:
    model = config["datasets"][dataset]["model"]
    model_dir, tok_dir = Path("resources/models") / model, Path("resources/tokenized") / dataset / model
    if not (model_dir.is_dir() and tok_dir.is_dir()):
        raise SystemExit(f"{model_dir} or {tok_dir} missing: make them with  .venv/bin/snakemake --cores 2 "
                         f"--configfile CONFIG {tok_dir}")
    return model_dir, tok_dir


def measure(config: dict, dataset: str, method: str, rounds: int, n_held: int, precision) -> dict:
    """Median seconds of one training step and of one curve point on ``n_held`` examples, alternated ABAB."""
    ds = dataset_entry(config, dataset)
    model_dir, tok_dir = _inputs(config, dataset)
    loader = ModelLoader.for_dataset(model_dir, ds, config["models"][ds["model"]])
    params = method_params_on(config, method, ds["model"])
    built = build_method(method, params, loader.target_modules, precision)
    seed_everything(0)
    model = built.build(loader).to(CPU)
    settings = TrainingSettings.from_dict(dataset_training(config, dataset))
    from transformers import AutoTokenizer

    collator = Collator(AutoTokenizer.from_pretrained(str(model_dir)), masked_lm=loader.lm_kind == "masked")
    rows = load_tokenized(tok_dir, TRAIN).to_list()
    held_part = HELDOUT if (tok_dir / HELDOUT).is_dir() else EVAL
    held = load_tokenized(tok_dir, held_part).to_list()
    if n_held > len(held):
        raise SystemExit(f"{dataset}: {n_held} held-out examples asked for, the tokenized {held_part} part has "
                         f"{len(held)}")
    picked = np.sort(np.random.default_rng(1).choice(len(held), size=n_held, replace=False))
    if settings.gradient_checkpointing:
        from lorabench.execution.trainer import enable_gradient_checkpointing
        enable_gradient_checkpointing(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = built.make_optimizer(trainable, params["lr"], settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = precision.grad_scaler()
    batches = length_grouped_batches([len(r["input_ids"]) for r in rows], settings.batch_size,
                                     np.random.default_rng(0))
    gen = torch.Generator().manual_seed(0)
    curve = HeldoutCurve([held[j] for j in picked], collator, ds["task"], loader.lm_kind,
                         config["evaluation"]["batch_size"], config["evaluation"]["mask_seed"], 1, precision=precision)

    def step(i: int) -> float:
        batch = collator([rows[j] for j in batches[i % len(batches)]], generator=gen)
        start = time.perf_counter()
        forward_backward(model, built, batch, precision, scaler, 1)
        optimizer_step(trainable, optimizer, scheduler, scaler, settings.max_grad_norm)
        return time.perf_counter() - start

    se = []  # the points' own standard errors (perplexity: what the curve reports)

    def evaluation() -> float:
        _, point_se, seconds, _ = curve.point(model, CPU)
        se.append(point_se)
        return seconds

    step(0)
    evaluation()  # warm-up of both arms
    steps, examples = [], []
    for r in range(rounds):
        arms = (step, evaluation) if r % 2 == 0 else (evaluation, step)
        for arm in arms:
            (steps if arm is step else examples).append(arm(r + 1) if arm is step else arm())
    out = {"step_s": float(np.median(steps)), "point_s": float(np.median(examples)),
           "step_iqr": float(np.subtract(*np.percentile(steps, [75, 25])) / np.median(steps)), "point_se": se[-1]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--methods", nargs="+", default=["lora", "full_ft"])
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=8, help="ABAB rounds per (dataset, method)")
    parser.add_argument("--holdout", type=int, nargs="*", default=None, help="held-out sizes to report, per dataset")
    parser.add_argument("--points", type=int, nargs="*", default=None, help="curve points to report, per dataset")
    parser.add_argument("--accuracy", type=float, default=0.80, help="accuracy at which a point's SE is stated")
    args = parser.parse_args(argv)
    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    set_threads(config["threads"])
    precision = resolve_precision(config["precision"], CPU)
    datasets = args.datasets or list(config["datasets"])
    print(f"{device_name(CPU)} ({platform.machine()}), precision {precision.name}, {args.config}", flush=True)
    print("dataset method steps points holdout step_s point_s step_iqr curve_share point_se se_limit")
    curve_s, train_s, within = {}, {}, []
    for k, dataset in enumerate(datasets):
        ds = config["datasets"][dataset]
        settings = TrainingSettings.from_dict(dataset_training(config, dataset))
        n_train = ds["train_size"]
        _, total = plan_steps(n_train, settings)
        n_held = args.holdout[k] if args.holdout else ds["holdout_size"]
        if not n_held:
            raise SystemExit(f"{dataset}: no holdout_size in {args.config}; give the sizes with --holdout")
        points = args.points[k] if args.points else curve_points(config, dataset)
        for method in args.methods:
            if method not in config["methods"] or dataset not in config["methods"][method].get("datasets", datasets):
                continue
            m = measure(config, dataset, method, args.rounds, n_held, precision)
            share = points * m["point_s"] / (total * m["step_s"])
            if ds["task"] == "classification":
                se, limit = math.sqrt(args.accuracy * (1 - args.accuracy) / n_held), 0.025
            else:
                se = m["point_se"]
                limit = 2.5 * config["evaluation"]["equivalence_margin"]["perplexity"]
            print(f"{dataset} {method} {total} {points} {n_held} {m['step_s']:.4f} {m['point_s']:.3f} "
                  f"{m['step_iqr']:.2f} {share:.3f} {se:.4f} {limit:.4f}", flush=True)
            curve_s[method] = curve_s.get(method, 0.0) + points * m["point_s"]
            train_s[method] = train_s.get(method, 0.0) + total * m["step_s"]
            if se <= limit and dataset not in within:
                within.append(dataset)
    print(" ".join(f"curve_share_{m}={curve_s[m] / train_s[m]:.3f}" for m in curve_s)
          + f" se_within_limit={','.join(within) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
