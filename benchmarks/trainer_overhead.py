"""Does the lorabench trainer add overhead? Rerun with:  .venv/bin/python benchmarks/trainer_overhead.py [--quick]

Three numbers, printed as the last line  overhead_ratio=X trainer_ratio=Y mfu=Z :
- overhead_ratio: lorabench.trainer.train vs a bare PyTorch+PEFT loop over the same, pre-collated batches
  (same model, method, optimizer and schedule); time per optimizer step. Target <= 1.05.
- trainer_ratio: a whole lorabench training run vs the Hugging Face Trainer configured as its
  text-classification example (run_glue.py: DataCollatorWithPadding, AdamW, linear schedule), same data
  and hyperparameters. Target <= 0.8.
- mfu: achieved training FLOP/s (fvcore count, see lorabench.flops) over this CPU's fp32 matmul peak,
  measured in the same process with a large GEMM. Reported per method; the last line gives LoRA's.
Real MiniLM weights and SST-2 sentences from the snapshots (LORABENCH_SNAPSHOTS, default ../shared/hf).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorabench.config import TrainingSettings
from lorabench.data import Collator, length_grouped_batches
from lorabench.flops import count as count_flops
from lorabench.methods import build_method
from lorabench.models import ModelLoader
from lorabench.trainer import RunId, plan_steps, train
from lorabench.utils import device_name, seed_everything, set_threads

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(os.environ.get("LORABENCH_SNAPSHOTS", REPO.parent / "shared" / "hf"))
MODEL = SNAPSHOTS / "models/sentence-transformers/all-MiniLM-L6-v2"
PARAMS = {
    "lora": {"lr": 1e-3, "r": 8, "alpha": 16, "dropout": 0.1},
    "hira": {"lr": 5e-3, "r": 8, "dropout": 0.1},
    "sparse_lora_magnitude": {"lr": 1e-3, "r": 8, "alpha": 16, "dropout": 0.1, "sparsity": 0.5,
                              "prune_start_frac": 0.1, "prune_end_frac": 0.7},
    "qlora": {"lr": 1e-3, "r": 8, "alpha": 16, "dropout": 0.1},
    "full_ft": {"lr": 5e-5},
}


def load_rows(n: int, max_length: int, tokenizer) -> list[dict]:
    df = pd.read_parquet(SNAPSHOTS / "datasets/stanfordnlp/sst2/data/train-00000-of-00001.parquet").head(n)
    ids = tokenizer(list(df["sentence"]), truncation=True, max_length=max_length)["input_ids"]
    return [{"example_id": i, "input_ids": x, "labels": int(y)} for i, (x, y) in enumerate(zip(ids, df["label"]))]


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def ours(method_name, loader, rows, collator, settings, seed=0):
    seed_everything(seed)
    method = build_method(method_name, PARAMS[method_name], loader.target_modules)
    model = method.build(loader)
    result = train(model, method, rows, collator, settings, PARAMS[method_name]["lr"], seed, torch.device("cpu"),
                   RunId(method_name, "sst2", seed), 0.0)
    return result, model


def bare_loop(method_name, loader, rows, collator, settings, seed=0) -> float:
    """The same batches, collated beforehand; forward, backward, clip, step, schedule. Nothing else."""
    from transformers import get_linear_schedule_with_warmup

    seed_everything(seed)
    method = build_method(method_name, PARAMS[method_name], loader.target_modules)
    model = method.build(loader)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=PARAMS[method_name]["lr"], weight_decay=settings.weight_decay)
    _, total = plan_steps(len(rows), settings)
    sched = get_linear_schedule_with_warmup(opt, round(settings.warmup_ratio * total), total)
    lengths = [len(r["input_ids"]) for r in rows]
    batches = [collator([rows[j] for j in idx])
               for idx in length_grouped_batches(lengths, settings.batch_size, np.random.default_rng([seed, 0]))]
    start = time.perf_counter()
    for batch in batches[:total]:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / min(total, len(batches))


def hf_trainer(method_name, loader, rows, tokenizer, settings, tmp, seed=0) -> float:
    """Hugging Face Trainer as in examples/pytorch/text-classification/run_glue.py; returns run seconds."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    seed_everything(seed)
    method = build_method(method_name, PARAMS[method_name], loader.target_modules)
    model = method.build(loader)
    ds = datasets.Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    args = TrainingArguments(
        output_dir=str(tmp), per_device_train_batch_size=settings.batch_size, learning_rate=PARAMS[method_name]["lr"],
        num_train_epochs=settings.epochs, weight_decay=settings.weight_decay,
        warmup_steps=round(settings.warmup_ratio * plan_steps(len(rows), settings)[1]),  # same warmup as ours
        max_grad_norm=settings.max_grad_norm, lr_scheduler_type="linear", seed=seed, save_strategy="no",
        logging_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 sentences, LoRA and full fine-tuning (< 2 min)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, help="append the tables as markdown to this file")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    rows = load_rows(256 if args.quick else 1024, 64, tokenizer)
    settings = TrainingSettings(epochs=1, batch_size=16, grad_accum_steps=1, warmup_ratio=0.06, weight_decay=0.0,
                                max_grad_norm=1.0, subset_seed=0)
    loader = ModelLoader(MODEL, "classification", 2)
    collator = Collator(tokenizer)
    peak = matmul_peak_flops()
    methods = ["lora", "full_ft"] if args.quick else list(PARAMS)
    lines, mfu = [], {}
    mean_len = float(np.mean([len(r["input_ids"]) for r in rows]))
    for name in methods:
        # Alternate ours and the bare loop, twice each, and keep each one's best: neither gets the warm cache.
        runs, bare = [], []
        for _ in range(2 if name in ("lora", "full_ft") else 1):
            runs.append(ours(name, loader, rows, collator, settings)[0])
            if name in ("lora", "full_ft"):
                bare.append(bare_loop(name, loader, rows, collator, settings))
        result = min(runs, key=lambda r: r["train_time_s"])
        step_ours = result["train_time_s"] / result["train_steps"]
        counted_as = build_method(name, PARAMS[name], loader.target_modules).flops_proxy or name  # 4-bit: see flops_run
        per_example = count_flops(build_method(counted_as, PARAMS[name], loader.target_modules).build(loader),
                                  mean_len, mean_len, len(tokenizer))["train_flops_per_example"]
        achieved = per_example * result["train_examples_seen"] / result["train_time_s"]
        mfu[name] = achieved / peak
        row = {"method": name, "steps": result["train_steps"], "ours_run_s": result["train_time_s"],
               "ours_step_ms": 1000 * step_ours, "achieved_gflops": achieved / 1e9, "mfu": mfu[name]}
        if bare:
            row.update(bare_step_ms=1000 * min(bare), overhead_ratio=step_ours / min(bare))
        lines.append(row)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        hf_s = hf_trainer("lora", loader, rows, tokenizer, settings, tmp)
    ours_s = next(r for r in lines if r["method"] == "lora")["ours_run_s"]
    table = pd.DataFrame(lines)
    header = (f"machine: {device_name(torch.device('cpu'))}, {platform.platform()}; date {date.today()}; "
              f"torch {torch.__version__}, {threads} threads; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; "
              f"{len(rows)} SST-2 sentences (mean {mean_len:.1f} tokens), batch 16, 1 epoch")
    trainer_ratio = ours_s / hf_s
    summary = (f"whole LoRA run: lorabench {ours_s:.2f} s, Hugging Face Trainer {hf_s:.2f} s, "
               f"ratio {trainer_ratio:.3f}")
    print(header)
    print(table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False))
    print(summary)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(f"\n### {'--quick' if args.quick else 'full'} run\n\n{header}\n\n")
            fh.write((table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else
                      "```\n" + table.to_string(index=False) + "\n```") + f"\n\n{summary}\n")
    lora = next(r for r in lines if r["method"] == "lora")
    print(f"overhead_ratio={lora['overhead_ratio']:.3f} trainer_ratio={trainer_ratio:.3f} mfu={mfu['lora']:.4f}")
    sys.stdout.flush()


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
