"""Does the lorabench trainer add overhead?   .venv/bin/python benchmarks/trainer_overhead.py [--quick]

Printed as the last line  overhead_ratio=X full_ft_overhead_ratio=F control_ratio=C trainer_ratio=Y mfu=Z :
- overhead_ratio (LoRA; full_ft_overhead_ratio, full fine-tuning): a lorabench training step
  (``trainer.micro_batch``, which collates on the fly, ``trainer.optimizer_step``, the losses kept in a
  ``trainer.LossLog``: exactly what ``trainer.train`` runs) against a bare PyTorch+PEFT step (batches
  collated beforehand; forward, backward, clip, step, schedule). Identical models, the same
  batches, interleaved step by step in one process (ABBA, so neither arm always goes first): a busy
  machine slows both arms alike. The ratio is the median of the per-step ratios (``ratio_of_medians`` and
  ``total_time_ratio`` beside it); ``control_ratio`` is a second bare arm against the first, the noise floor.
  Target <= 1.03 (issue "Pay each fixed cost once").
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


def interleaved_steps(name, loader, rows, collator, settings, precision, passes: int, warmup: int = 3) -> dict:
    """Per-step times of the lorabench step, the bare step and a second bare step (the control), on the same
    batches, ``passes`` times over the rows (each pass its own length-grouped order). The order alternates
    ours-bare-control, control-bare-ours: ours and the control hold the same positions around the bare arm, so
    control/bare is what ours/bare would read with no overhead at all (the noise floor)."""
    lengths = [len(r["input_ids"]) for r in rows]
    batches = [b for p in range(passes)
               for b in length_grouped_batches(lengths, settings.batch_size, np.random.default_rng([0, p]))]
    total = len(batches)
    a, b, c = (Arm(name, PARAMS[name], loader, settings, total, precision) for _ in range(3))
    times = {"ours": [], "bare": [], "control": []}
    for i, idx in enumerate(batches):
        examples = [rows[j] for j in idx]
        pre = collator(examples)
        arms = [("ours", lambda: a.ours(examples, collator, i + 1, total)), ("bare", lambda: b.bare(pre)),
                ("control", lambda: c.bare(pre))]
        step = {arm: run() for arm, run in (arms if i % 2 == 0 else arms[::-1])}
        if i >= warmup:
            for arm, t in step.items():
                times[arm].append(t)
    out = {"method": name, "steps_timed": len(times["ours"])}
    for arm in ("ours", "bare"):
        q1, med, q3 = np.percentile(1000 * np.asarray(times[arm]), [25, 50, 75])
        out.update({f"{arm}_step_ms_median": med, f"{arm}_step_ms_iqr": q3 - q1})
    # Batches differ in length, so step times spread over length groups; a median of each arm's times can fall
    # in different groups and jump by 10%. Each pair of steps ran the same batch back to back: the median of
    # their ratios is the comparison (docs/measurements/trainer-overhead.md).
    bare = np.asarray(times["bare"])
    ratios, control = np.asarray(times["ours"]) / bare, np.asarray(times["control"]) / bare
    out["overhead_ratio"] = float(np.median(ratios))
    out["step_ratio_iqr"] = float(np.subtract(*np.percentile(ratios, [75, 25])))
    out["control_ratio"] = float(np.median(control))
    out["total_time_ratio"] = float(np.sum(times["ours"]) / bare.sum())
    out["ratio_of_medians"] = out["ours_step_ms_median"] / out["bare_step_ms_median"]
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
    parser.add_argument("--passes", type=int, default=3,
                        help="passes over the rows in the step comparison (--quick: 3 x 16 steps, 45 timed)")
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
        row = interleaved_steps(name, loader, rows, collator, settings, precision, args.passes)
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
    full = next(r for r in lines if r["method"] == "full_ft")
    print(f"overhead_ratio={lora['overhead_ratio']:.3f} full_ft_overhead_ratio={full['overhead_ratio']:.3f} "
          f"control_ratio={lora['control_ratio']:.3f} trainer_ratio={trainer_ratio:.3f} mfu={lora['mfu']:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
