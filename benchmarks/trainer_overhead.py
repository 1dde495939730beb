"""Does the lorabench trainer add overhead?   .venv/bin/python benchmarks/trainer_overhead.py [--quick]

Three numbers, printed as the last line  overhead_ratio=X trainer_ratio=Y mfu=Z :
- overhead_ratio: a lorabench training step (collate on the fly, ``trainer.forward_backward`` and
  ``trainer.optimizer_step``, exactly what ``trainer.train`` runs) against a bare PyTorch+PEFT step
  (batches collated beforehand; forward, backward, clip, step, schedule). Two identical models, the same
  batches, interleaved step by step in one process (ABBA, so neither arm always goes first): a busy
  machine slows both arms alike. Median and IQR of the step times per arm; the ratio is of medians.
  Target <= 1.05.
- trainer_ratio: a whole lorabench LoRA training run against the Hugging Face Trainer with
  ``group_by_length=True`` (its fair setting: it too batches sentences of similar length), same data,
  hyperparameters and precision; whole runs alternated ABAB, ``--rounds`` each, median per arm.
- mfu: achieved training FLOP/s of the lorabench arm (fvcore count, see lorabench.execution.flops) over this CPU's
  matmul peak in the same precision, measured in the same process with a 2048 x 2048 GEMM.
Real MiniLM weights and SST-2 sentences from the snapshots (LORABENCH_SNAPSHOTS, default ../shared/hf).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorabench.execution.flops import count as count_flops
from lorabench.execution.settings import TrainingSettings
from lorabench.execution.trainer import RunId, plan_steps, train
from lorabench.loading.data import Collator, length_grouped_batches
from lorabench.loading.models import ModelLoader
from lorabench.loading.quantization import full_precision
from lorabench.methods import build_method
from lorabench.runtime.device import device_name, seed_everything, set_threads
from lorabench.runtime.precision import resolve_precision

from common import SNAPSHOTS, Arm

MODEL = SNAPSHOTS / "models/sentence-transformers/all-MiniLM-L6-v2"
CPU = torch.device("cpu")
PARAMS = {
    "lora": {"lr": 1e-3, "r": 8, "alpha": 16, "dropout": 0.1},
    "hira": {"lr": 5e-3, "r": 8, "dropout": 0.1},
    "sparse_lora_magnitude": {"lr": 1e-3, "r": 8, "alpha": 16, "dropout": 0.1, "sparsity": 0.5,
                              "prune_start_frac": 0.1, "prune_end_frac": 0.7},
    "qlora": {"lr": 1e-3, "r": 8, "alpha": 16, "dropout": 0.1, "compute_dtype": None},
    "full_ft": {"lr": 5e-5},
}


def load_rows(n: int, max_length: int, tokenizer) -> list[dict]:
    df = pd.read_parquet(SNAPSHOTS / "datasets/stanfordnlp/sst2/data/train-00000-of-00001.parquet").head(n)
    ids = tokenizer(list(df["sentence"]), truncation=True, max_length=max_length)["input_ids"]
    return [{"example_id": i, "input_ids": x, "labels": int(y)} for i, (x, y) in enumerate(zip(ids, df["label"]))]


def matmul_peak_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def interleaved_steps(name, loader, rows, collator, settings, precision, warmup: int = 3) -> dict:
    """Per-step times of the lorabench step and the bare step, ABBA on the same batches."""
    lengths = [len(r["input_ids"]) for r in rows]
    batches = length_grouped_batches(lengths, settings.batch_size, np.random.default_rng([0, 0]))
    total = len(batches)
    a, b = (Arm(name, PARAMS[name], loader, settings, total, precision) for _ in range(2))
    ours, bare = [], []
    for i, idx in enumerate(batches):
        examples = [rows[j] for j in idx]
        pre = collator(examples)
        if i % 2 == 0:
            t_ours, t_bare = a.ours(examples, collator, i + 1, total), b.bare(pre)
        else:
            t_bare, t_ours = b.bare(pre), a.ours(examples, collator, i + 1, total)
        if i >= warmup:
            ours.append(t_ours)
            bare.append(t_bare)
    out = {"method": name, "steps_timed": len(ours)}
    for arm, times in (("ours", ours), ("bare", bare)):
        q1, med, q3 = np.percentile(1000 * np.asarray(times), [25, 50, 75])
        out.update({f"{arm}_step_ms_median": med, f"{arm}_step_ms_iqr": q3 - q1})
    out["overhead_ratio"] = out["ours_step_ms_median"] / out["bare_step_ms_median"]
    ratios = np.asarray(ours) / np.asarray(bare)  # per step: how stable the comparison was
    out["step_ratio_iqr"] = float(np.subtract(*np.percentile(ratios, [75, 25])))
    return out


def ours_run(loader, rows, collator, settings, precision) -> float:
    seed_everything(0)
    method = build_method("lora", PARAMS["lora"], loader.target_modules, precision)
    model = method.build(loader)
    result = train(model, method, rows, collator, settings, PARAMS["lora"]["lr"], 0, CPU, RunId("lora", "sst2", 0),
                   precision=precision)
    return result["train_time_s"]


def hf_trainer_run(loader, rows, tokenizer, settings, precision, tmp) -> float:
    """Hugging Face Trainer sampling by length (group_by_length; transformers 5 calls it
    train_sampling_strategy="group_by_length"), like lorabench: length-grouped batches. Returns seconds."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    seed_everything(0)
    method = build_method("lora", PARAMS["lora"], loader.target_modules, precision)
    model = method.build(loader)
    ds = datasets.Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    args = TrainingArguments(
        output_dir=str(tmp), per_device_train_batch_size=settings.batch_size, learning_rate=PARAMS["lora"]["lr"],
        num_train_epochs=settings.epochs, weight_decay=settings.weight_decay,
        warmup_steps=round(settings.warmup_ratio * plan_steps(len(rows), settings)[1]),  # same warmup as ours
        max_grad_norm=settings.max_grad_norm, lr_scheduler_type="linear", seed=0, save_strategy="no",
        logging_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        remove_unused_columns=False, train_sampling_strategy="group_by_length", bf16=precision.name == "bf16",
        fp16=precision.name == "fp16",
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 sentences, LoRA and full fine-tuning (~2 min)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--rounds", type=int, default=3, help="whole runs per arm against the HF Trainer")
    parser.add_argument("--out", type=Path, help="append the tables as markdown to this file")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    from transformers import AutoTokenizer

    precision = resolve_precision(args.precision, CPU)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    rows = load_rows(256 if args.quick else 1024, 64, tokenizer)
    settings = TrainingSettings(epochs=1, batch_size=16, grad_accum_steps=1, warmup_ratio=0.06, weight_decay=0.0,
                                max_grad_norm=1.0, subset_seed=0)
    loader = ModelLoader(MODEL, "classification", 2)
    collator = Collator(tokenizer)
    peak = matmul_peak_flops(precision.autocast_dtype or torch.float32)
    mean_len = float(np.mean([len(r["input_ids"]) for r in rows]))
    lines = []
    for name in (["lora", "full_ft"] if args.quick else list(PARAMS)):
        row = interleaved_steps(name, loader, rows, collator, settings, precision)
        # fvcore cannot trace a quantized base: count the same adapter in full precision.
        per_example = count_flops(build_method(name, full_precision(PARAMS[name]), loader.target_modules).build(loader),
                                  mean_len, mean_len, len(tokenizer))["train_flops_per_example"]
        achieved = per_example * settings.batch_size / (row["ours_step_ms_median"] / 1000)
        row.update(achieved_gflops=achieved / 1e9, mfu=achieved / peak)
        lines.append(row)
    ours_s, hf_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # ABAB whole runs
            ours_s.append(ours_run(loader, rows, collator, settings, precision))
            hf_s.append(hf_trainer_run(loader, rows, tokenizer, settings, precision, tmp))
    trainer_ratio = float(np.median(ours_s) / np.median(hf_s))
    table = pd.DataFrame(lines)
    header = (f"machine: {device_name(CPU)}, {platform.platform()}; date {date.today()}; torch {torch.__version__}, "
              f"{threads} threads; precision {precision.name} (asked {precision.requested}); matmul peak in that "
              f"precision {peak / 1e9:.1f} GFLOP/s; {len(rows)} SST-2 sentences (mean {mean_len:.1f} tokens), "
              "batch 16, 1 epoch")
    summary = (f"whole LoRA run, {args.rounds} rounds each, ABAB: lorabench median {np.median(ours_s):.2f} s "
               f"(runs {', '.join(f'{s:.2f}' for s in ours_s)}), Hugging Face Trainer with group_by_length=True "
               f"median {np.median(hf_s):.2f} s (runs {', '.join(f'{s:.2f}' for s in hf_s)}), ratio {trainer_ratio:.3f}")
    text = table.to_markdown(index=False, floatfmt=".3f")
    print(header, text, summary, sep="\n")
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(f"\n### {'--quick' if args.quick else 'full'} run, {precision.name}\n\n{header}\n\n{text}\n\n"
                     f"{summary}\n")
    lora = next(r for r in lines if r["method"] == "lora")
    print(f"overhead_ratio={lora['overhead_ratio']:.3f} trainer_ratio={trainer_ratio:.3f} mfu={lora['mfu']:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
