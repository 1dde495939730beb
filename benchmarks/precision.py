"""fp32 against bf16 autocast: step time, and accuracy or perplexity over seeds.

    .venv/bin/python benchmarks/precision.py [--quick] [--out docs/measurements/precision.md]

For LoRA, full fine-tuning and QLoRA on MiniLM and SmolLM2:
- step time: two identical models, one stepping in fp32 and one under bf16 autocast, on the same batches,
  interleaved step by step in one process (ABBA); median and IQR per arm, speed-up = ratio of medians.
  MiniLM at batch 16 x 128 tokens (random token ids: the time does not depend on them), SmolLM2 at
  batch 8 x 64 tokens of WikiText-2.
- quality: SST-2 accuracy (MiniLM) and WikiText-2 perplexity (SmolLM2) with config.yaml's data sizes,
  training settings and learning rates, seeds 0-2 (``--seeds``), mean and 95% t-interval per precision,
  and whether the bf16 mean lies inside the fp32 interval.
The last line is  bf16_speedup_lora_smollm2=X bf16_speedup_lora_minilm=Y bf16_inside_fp32_ci=yes|no
Data and models are prepared under resources/bench/ from the snapshots (LORABENCH_SNAPSHOTS, default ../shared/hf).
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import date
from pathlib import Path

import pandas as pd
import torch

from lorabench.analysis.stats import t_interval
from lorabench.config.views import dataset_training, method_params_on
from lorabench.execution.evaluate import evaluate
from lorabench.execution.settings import TrainingSettings
from lorabench.execution.trainer import RunId, train
from lorabench.loading.data import EVAL, TRAIN, Collator, load_tokenized
from lorabench.loading.models import ModelLoader
from lorabench.methods import build_method
from lorabench.methods.checks import load_config
from lorabench.runtime.device import device_name, seed_everything, set_threads
from lorabench.runtime.precision import resolve_precision

from common import REPO, SNAPSHOTS, Arm, interleaved_bare_steps, prepare, step_summary

CPU = torch.device("cpu")
METHODS = ["lora", "full_ft", "qlora"]
CASES = {"minilm": "sst2", "smollm2": "wikitext2"}  # model -> the dataset it is scored on


def step_times(model_name, method, params, loader, batches, settings) -> dict:
    """fp32 and bf16 arms, ABBA on the same batches; the first two steps of each arm are not timed."""
    arms = {p: Arm(method, params, loader, settings, len(batches), resolve_precision(p, CPU)) for p in ("fp32", "bf16")}
    # the arithmetic of a step in each precision (autocast inside)
    row = {"model": model_name, "method": method, **step_summary(interleaved_bare_steps(arms, batches))}
    row["bf16_speedup"] = row["fp32_step_ms_median"] / row["bf16_step_ms_median"]
    return row


def timing_batches(model_name, model_dir, tok_dir, n: int) -> list[dict]:
    from transformers import AutoTokenizer

    if model_name == "minilm":  # batch 16 x 128 tokens
        gen = torch.Generator().manual_seed(0)
        return [{"input_ids": torch.randint(1000, 29000, (16, 128), generator=gen),
                 "attention_mask": torch.ones(16, 128, dtype=torch.long),
                 "labels": torch.randint(0, 2, (16,), generator=gen)} for _ in range(n)]
    rows = load_tokenized(tok_dir, TRAIN).to_list()  # batch 8 x 64 tokens of WikiText-2
    collator = Collator(AutoTokenizer.from_pretrained(model_dir))
    return [collator([rows[(8 * i + j) % len(rows)] for j in range(8)]) for i in range(n)]


def quality(config, dataset, model_dir, tok_dir, method, precision, seed) -> float:
    from transformers import AutoTokenizer

    ds = config["datasets"][dataset]
    settings = TrainingSettings.from_dict(dataset_training(config, dataset))
    prec = resolve_precision(precision, CPU)
    loader = ModelLoader.for_dataset(model_dir, ds, config["models"][ds["model"]])
    params = method_params_on(config, method, ds["model"])
    m = build_method(method, params, loader.target_modules, prec)
    seed_everything(seed)
    model = m.build(loader)
    collator = Collator(AutoTokenizer.from_pretrained(model_dir), masked_lm=loader.lm_kind == "masked")
    train(model, m, load_tokenized(tok_dir, TRAIN).to_list(), collator, settings, params["lr"], seed, CPU,
          RunId(method, dataset, seed), precision=prec)
    scores, _ = evaluate(model, load_tokenized(tok_dir, EVAL).to_list(), collator, ds["task"], loader.lm_kind,
                         config["evaluation"]["batch_size"], 0, CPU, prec)
    return scores["accuracy"] if ds["task"] == "classification" else scores["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="LoRA only, 1 seed, fewer timed steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=14, help="timed steps per arm, plus 2 untimed")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, help="append the tables as markdown to this file")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    config = load_config(REPO / "config.yaml", {"snapshots": str(SNAPSHOTS)})
    cache = REPO / "resources" / "bench"
    methods = ["lora"] if args.quick else METHODS
    seeds = range(1 if args.quick else args.seeds)
    steps = 6 if args.quick else args.steps

    timing, scores = [], []
    for model_name, dataset in CASES.items():
        model_dir, tok_dir = prepare(config, dataset, cache)
        ds = config["datasets"][dataset]
        loader = ModelLoader.for_dataset(model_dir, ds, config["models"][ds["model"]])
        batches = timing_batches(model_name, model_dir, tok_dir, steps + 2)
        settings = TrainingSettings.from_dict(config["training"])  # the step alone: no recomputation
        for method in methods:
            timing.append(step_times(model_name, method, method_params_on(config, method, ds["model"]), loader,
                                     batches, settings))
            for precision in ("fp32", "bf16"):
                for seed in seeds:
                    value = quality(config, dataset, model_dir, tok_dir, method, precision, seed)
                    scores.append({"model": model_name, "dataset": dataset, "method": method,
                                   "precision": precision, "seed": seed, "metric": value})
    timing, scores = pd.DataFrame(timing), pd.DataFrame(scores)
    rows = []
    for (model_name, dataset, method), g in scores.groupby(["model", "dataset", "method"], sort=False):
        row = {"model": model_name, "dataset": dataset, "method": method,
               "metric": "accuracy" if dataset != "wikitext2" else "perplexity"}
        for p in ("fp32", "bf16"):
            mean, _, lo, hi = t_interval(g.loc[g["precision"] == p, "metric"])
            row.update({f"{p}_mean": mean, f"{p}_ci95_low": lo, f"{p}_ci95_high": hi})
        row["bf16_inside_fp32_ci"] = bool(row["fp32_ci95_low"] <= row["bf16_mean"] <= row["fp32_ci95_high"])
        rows.append(row)
    quality_table = pd.DataFrame(rows)
    header = (f"machine: {device_name(CPU)}, {platform.platform()}; date {date.today()}; torch {torch.__version__}, "
              f"{threads} threads; quality: config.yaml's sizes and learning rates, seeds {list(seeds)}")
    text = (f"{header}\n\nStep time (ms), fp32 and bf16 arms interleaved on the same batches:\n\n"
            f"{timing.to_markdown(index=False, floatfmt='.3f')}\n\nQuality, mean and 95% t-interval over seeds:\n\n"
            f"{quality_table.to_markdown(index=False, floatfmt='.4f')}\n")
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(f"\n### Precision: fp32 against bf16{' (--quick)' if args.quick else ''}\n\n{text}")
    speed = timing.set_index(["model", "method"])["bf16_speedup"]
    inside = "yes" if quality_table["bf16_inside_fp32_ci"].all() else "no"
    print(f"bf16_speedup_lora_smollm2={speed[('smollm2', 'lora')]:.3f} "
          f"bf16_speedup_lora_minilm={speed[('minilm', 'lora')]:.3f} bf16_inside_fp32_ci={inside}")


if __name__ == "__main__":
    main()
