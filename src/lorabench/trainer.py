"""One training loop for every method: the method plugs in through hooks, the loop never asks which it is."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from lorabench.config import TrainingSettings
from lorabench.data import length_grouped_batches
from lorabench.utils import peak_rss_mb


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite; the message names method, dataset, seed and step."""


@dataclass(frozen=True)
class RunId:
    method: str
    dataset: str
    seed: int

    def __str__(self) -> str:
        return f"method={self.method} dataset={self.dataset} seed={self.seed}"


def plan_steps(n_examples: int, settings: TrainingSettings) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for this many training examples."""
    micro = math.ceil(n_examples / settings.batch_size)
    per_epoch = math.ceil(micro / settings.grad_accum_steps)
    total = per_epoch * settings.epochs
    if settings.max_steps:
        total = min(total, settings.max_steps)
    return per_epoch, total


def train(model, method, rows: list[dict], collator, settings: TrainingSettings, lr: float, seed: int,
          device: torch.device, run: RunId, baseline_rss_mb: float) -> dict:
    """Train ``model`` in place and return the training metrics of the run."""
    from transformers import get_linear_schedule_with_warmup

    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = method.make_optimizer(params, lr, settings.weight_decay)
    per_epoch, total_steps = plan_steps(len(rows), settings)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(settings.warmup_ratio * total_steps), total_steps)
    lengths = [len(r["input_ids"]) for r in rows]
    mask_gen = torch.Generator().manual_seed(seed)  # masked-LM masks; dropout uses the global seed
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    step, tokens, examples, loss_curve, epoch_times = 0, 0, 0, [], []
    progress = tqdm(total=total_steps, desc=str(run), file=sys.stderr, mininterval=5)
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        epoch_start = time.perf_counter()
        batches = length_grouped_batches(lengths, settings.batch_size, np.random.default_rng([seed, epoch]))
        running = 0.0
        for i, idx in enumerate(batches):
            batch = collator([rows[j] for j in idx], generator=mask_gen)
            tokens += int(batch["attention_mask"].sum())
            examples += len(idx)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            extra = method.regularization(model)
            total = loss if extra is None else loss + extra
            if not torch.isfinite(total):
                raise DivergenceError(f"loss is {total.item()} at optimizer step {step + 1} ({run}); "
                                      "lower the learning rate or check the data; no output was written")
            (total / settings.grad_accum_steps).backward()
            running += loss.item() / settings.grad_accum_steps
            if (i + 1) % settings.grad_accum_steps and i + 1 < len(batches):
                continue
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            method.on_optimizer_step(model, step, total_steps)
            loss_curve.append({"step": step, "epoch": epoch, "loss": running, "lr": scheduler.get_last_lr()[0]})
            running = 0.0
            progress.update(1)
            progress.set_postfix(loss=f"{loss_curve[-1]['loss']:.4f}", refresh=False)
            if step >= total_steps:
                break
        epoch_times.append(time.perf_counter() - epoch_start)
        if step >= total_steps:
            break
    method.finalize(model)
    train_time = time.perf_counter() - start
    progress.close()
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_rss_mb() - baseline_rss_mb)
    return {
        "train_steps": step,
        "train_examples_seen": examples,
        "train_tokens_seen": tokens,
        "train_time_s": train_time,
        "train_time_per_epoch_s": train_time / len(epoch_times),
        "epoch_times_s": epoch_times,
        "epochs_run": len(epoch_times),
        "train_tokens_per_s": tokens / train_time,
        "train_examples_per_s": examples / train_time,
        "peak_train_mem_mb": peak,
        "final_train_loss": loss_curve[-1]["loss"] if loss_curve else float("nan"),
        "first_train_loss": loss_curve[0]["loss"] if loss_curve else float("nan"),
        "loss_curve": loss_curve,
        "lr": lr,
    }
