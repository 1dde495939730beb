"""What the benchmarks share: the snapshot and repository paths, a config dataset's model and tokens prepared
once under a cache folder, and two training arms stepping on the same batches in alternating order (ABBA).

Each benchmark is a script (``.venv/bin/python benchmarks/<name>.py``): Python puts this folder on sys.path,
so ``from common import ...`` finds this module."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from lorabench.config.views import dataset_entry
from lorabench.execution.trainer import LossLog, Progress, RunId, micro_batch, optimizer_step
from lorabench.loading.data import fetch_dataset, tokenize_dataset
from lorabench.loading.models import fetch_model
from lorabench.methods import build_method
from lorabench.runtime.device import seed_everything

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(os.environ.get("LORABENCH_SNAPSHOTS", REPO.parent / "shared" / "hf"))


class Arm:
    """One model with its optimizer and schedule; ``step`` runs one optimizer step and returns its seconds."""

    def __init__(self, name, params, loader, settings, total_steps, precision, seed=0):
        from transformers import get_linear_schedule_with_warmup

        seed_everything(seed)
        self.method = build_method(name, params, loader.target_modules, precision)
        self.model = self.method.build(loader)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self.method.make_optimizer(self.params, params["lr"], settings.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, round(settings.warmup_ratio * total_steps),
                                                         total_steps)
        self.scaler = precision.grad_scaler()
        self.precision = precision
        self.settings = settings
        self.device = torch.device("cpu")
        self.mask_gen = torch.Generator().manual_seed(seed)
        self.progress = Progress()
        self.losses = LossLog(self.progress, RunId(name, "benchmark", seed))

    def ours(self, examples, collator, step: int, total_steps: int) -> float:
        """What trainer.train runs per step, with its own functions: ``micro_batch`` (collate, count, copy,
        forward and backward), ``optimizer_step``, the method's hook, the loss kept on the device in a
        ``LossLog`` and read when it is due."""
        start = time.perf_counter()
        loss, total = micro_batch(self.model, self.method, examples, collator, self.mask_gen, self.device,
                                  self.precision, self.scaler, 1, self.progress)
        optimizer_step(self.params, self.optimizer, self.scheduler, self.scaler, self.settings.max_grad_norm)
        self.method.on_optimizer_step(self.model, step, total_steps)
        if self.losses.add(step, 0, self.scheduler.get_last_lr()[0], loss, total):
            self.losses.read()
        return time.perf_counter() - start

    def bare(self, batch) -> float:
        """A hand-written loop over a batch collated beforehand: nothing but the arithmetic."""
        start = time.perf_counter()
        with self.precision.autocast():
            loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def interleaved_bare_steps(arms: dict, batches: list[dict], skip: int = 2) -> dict[str, list[float]]:
    """Milliseconds per step of two arms (name -> Arm) stepping on the same batches, ABBA order (neither arm
    always goes first); the first ``skip`` batches pick kernels for the shapes and are not timed."""
    first, second = arms
    times = {name: [] for name in arms}
    for i, batch in enumerate(batches):
        for name in ((first, second) if i % 2 == 0 else (second, first)):
            t = arms[name].bare(batch)
            if i >= skip:
                times[name].append(1000 * t)
    return times


def step_summary(times: dict[str, list[float]]) -> dict:
    """<arm>_step_ms_median and <arm>_step_ms_iqr of each arm."""
    row = {}
    for name, ts in times.items():
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        row.update({f"{name}_step_ms_median": med, f"{name}_step_ms_iqr": q3 - q1})
    return row


def prepare(config: dict, dataset: str, cache: Path) -> tuple[Path, Path]:
    """(model folder, tokenized folder) for a dataset of the config, built once under ``cache``. The tokens are
    kept per version of the dataset's entry, so a changed size or length never reads a stale cache."""
    ds = dataset_entry(config, dataset)
    model_cfg = config["models"][ds["model"]]
    model_dir, raw_dir = cache / "models" / ds["model"], cache / "datasets" / dataset
    version = hashlib.sha256(json.dumps([ds, config["training"]["subset_seed"]], sort_keys=True).encode())
    tok_dir = cache / "tokenized" / dataset / f"{ds['model']}_{version.hexdigest()[:12]}"
    if not model_dir.exists():
        fetch_model(model_cfg["repo"], config["snapshots"], model_dir, model_cfg.get("gguf_file"))
    if not raw_dir.exists():
        fetch_dataset(ds["repo"], ds.get("config_name"), [ds["train_split"], ds["eval_split"]], config["snapshots"],
                      raw_dir)
    if not tok_dir.exists():
        tokenize_dataset(ds, model_dir, raw_dir, config["training"]["subset_seed"], tok_dir)
    return model_dir, tok_dir
