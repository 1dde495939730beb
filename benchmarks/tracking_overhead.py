"""What does tracking cost a training step?   .venv/bin/python benchmarks/tracking_overhead.py [--quick]

Two arms run the same LoRA training (``trainer.train``, real MiniLM weights and SST-2 sentences from the
snapshots), with checkpoints every ``--every`` optimizer steps: one with no tracker, one logged to TensorBoard,
MLflow and W&B (offline) at once. Whole runs alternate ABBA, ``--rounds`` per arm, in one process, so a busy
machine slows both arms alike. Per arm, the median over rounds of the time per optimizer step: the training
loop (``train_time_s``, which leaves logging out) plus, for the tracked arm, the seconds the trackers took at
the checkpoints and the end. The ratio of the two medians is the last line, ``tracking_step_ratio=X``;
target <= 1.02. A tracker's W&B service process runs beside training, so its CPU use shows up in the tracked
arm's loop time too.

Also printed: the fixed cost per job, paid once and outside the training loop: starting the trackers
(imports, the MLflow experiment; the first round pays the imports) and logging the final metrics and closing.
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
import torch

from lorabench.execution.settings import TrainingSettings
from lorabench.execution.tracking import Tracking
from lorabench.execution.trainer import RunId, train
from lorabench.loading.data import Collator
from lorabench.loading.models import ModelLoader
from lorabench.methods import build_method
from lorabench.runtime.device import device_name, seed_everything, set_threads
from lorabench.runtime.precision import resolve_precision

from trainer_overhead import MODEL, PARAMS, load_rows

CPU = torch.device("cpu")
TRACKERS = ["tensorboard", "mlflow", "wandb"]


def one_run(tracked: bool, round_: int, loader, rows, collator, settings, precision, root: Path) -> dict:
    seed_everything(0)
    method = build_method("lora", PARAMS["lora"], loader.target_modules, precision)
    model = method.build(loader)
    start = time.perf_counter()
    tracking = Tracking(TRACKERS if tracked else (), root / "results", f"sst2/lora/round{round_}",
                        {"method_params": PARAMS["lora"]}, {"device": device_name(CPU)},
                        root / f"ckpt{round_}{tracked}")
    opened = time.perf_counter() - start
    result = train(model, method, rows, collator, settings, PARAMS["lora"]["lr"], 0, CPU, RunId("lora", "sst2", 0),
                   checkpoint_dir=root / f"ckpt{round_}{tracked}", precision=precision, tracking=tracking)
    start = time.perf_counter()
    tracking.finish(result)
    tracking.close(ok=True)
    closed = time.perf_counter() - start
    steps = result["train_steps"]
    return {"step_ms": 1000 * (result["train_time_s"] + tracking.seconds) / steps,
            "logging_ms_per_step": 1000 * tracking.seconds / steps, "open_s": opened, "finish_close_s": closed,
            "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="320 sentences (20 steps), 2 rounds per arm")
    parser.add_argument("--rounds", type=int, default=4, help="whole runs per arm")
    parser.add_argument("--every", type=int, default=10, help="optimizer steps between checkpoints (= logging)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--out", type=Path, help="append the result as markdown to this file")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    rounds = 2 if args.quick else args.rounds
    from transformers import AutoTokenizer

    precision = resolve_precision(args.precision, CPU)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    rows = load_rows(320 if args.quick else 1600, 64, tokenizer)
    settings = TrainingSettings(epochs=1, batch_size=16, grad_accum_steps=1, warmup_ratio=0.06, weight_decay=0.0,
                                max_grad_norm=1.0, subset_seed=0, checkpoint_every=args.every)
    loader = ModelLoader(MODEL, "classification", 2)
    collator = Collator(tokenizer)
    arms = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):  # ABBA: neither arm always goes first
            for tracked in ((False, True) if r % 2 == 0 else (True, False)):
                arms[tracked].append(one_run(tracked, r, loader, rows, collator, settings, precision, Path(tmp)))
    off, on = (np.median([x["step_ms"] for x in arms[k]]) for k in (False, True))
    ratio = on / off
    header = (f"machine: {device_name(CPU)}, {platform.platform()}; date {date.today()}; torch {torch.__version__}, "
              f"{threads} threads; precision {precision.name}; {len(rows)} SST-2 sentences, batch 16, "
              f"{arms[True][0]['steps']} steps, checkpoint and logging every {args.every} steps; trackers "
              f"{', '.join(TRACKERS)}; {rounds} rounds per arm, ABBA")
    def listed(arm, key, fmt=".1f"):
        return ", ".join(f"{x[key]:{fmt}}" for x in arms[arm])

    lines = [
        f"- step time without tracking: median {off:.1f} ms (rounds {listed(False, 'step_ms')})",
        f"- step time with tracking, logging included: median {on:.1f} ms (rounds {listed(True, 'step_ms')}); of "
        f"which logging {np.median([x['logging_ms_per_step'] for x in arms[True]]):.2f} ms per step",
        f"- per job, outside the loop: starting the trackers {listed(True, 'open_s', '.2f')} s (the first round "
        f"imports the libraries); final metrics and close {listed(True, 'finish_close_s', '.2f')} s",
    ]
    print(header, *lines, sep="\n")
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(f"\n{header}\n\n" + "\n".join(lines) + f"\n\ntracking_step_ratio={ratio:.3f}\n")
    print(f"tracking_step_ratio={ratio:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
