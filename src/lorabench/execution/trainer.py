"""One training loop for every method: the method plugs in through hooks, the loop never asks which it is."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lorabench.config.views import optimizer_steps
from lorabench.execution.attempts import Attempts
from lorabench.execution.curve import HeldoutCurve
from lorabench.execution.flops import step_flops_per_token
from lorabench.execution.settings import TrainingSettings
from lorabench.execution.tracking import Tracking
from lorabench.loading.data import calibration_batches, length_grouped_batches
from lorabench.runtime.device import device_name
from lorabench.runtime.memory import PhaseMemory, managed_bytes, stored_bytes
from lorabench.runtime.precision import FP32, Precision


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite; the message names method, dataset, seed and step."""


@dataclass(frozen=True)
class RunId:
    method: str
    dataset: str
    seed: int

    def __str__(self) -> str:
        return f"method={self.method} dataset={self.dataset} seed={self.seed}"


@dataclass
class Progress:
    """Where a run stands; saved in checkpoints so a killed job resumes exactly where it was."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next micro-batch of ``epoch``
    tokens: int = 0
    examples: int = 0
    elapsed_s: float = 0.0
    epoch_elapsed_s: float = 0.0
    loss_curve: list = field(default_factory=list)
    epoch_times: list = field(default_factory=list)
    skipped_steps: int = 0  # fp16 steps skipped by loss scaling (gradient overflow)
    phase_tokens: dict = field(default_factory=dict)  # padded tokens computed per kind of step (train_flops)
    heldout_curve: list = field(default_factory=list)  # the held-out curve's points so far (execution/curve.py)
    curve_eval_s: float = 0.0  # seconds spent evaluating them, never training time
    heldout_outputs: list = field(default_factory=list)  # the last point's per-example outputs (its gain_se)
    probe_peaks: list = field(default_factory=list)  # training memory of the probe micro-batches measured so far


class Checkpointer:
    """Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states, method state, data position.

    Written every ``every`` optimizer steps to ``<dir>/checkpoint.pt`` atomically (temp file, then
    rename), loaded with ``torch.load(weights_only=True)``. A checkpoint from other settings (the
    fingerprint differs) is discarded, not resumed.
    """

    def __init__(self, directory, every: int, fingerprint: dict):
        self.dir = Path(directory)
        self.every = every
        self.fingerprint = fingerprint
        self.path = self.dir / "checkpoint.pt"

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, model, optimizer, scheduler, scaler, method, mask_gen, progress: Progress) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "fingerprint": self.fingerprint,
            "trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "method": method.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "mask_rng": mask_gen.get_state(),
            "progress": asdict(progress),
        }
        tmp = self.dir / f".checkpoint.{os.getpid()}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, self.path)

    def load(self, model, optimizer, scheduler, scaler, method, mask_gen) -> Progress | None:
        if not self.path.exists():
            return None
        payload = torch.load(self.path, weights_only=True)
        if payload["fingerprint"] != self.fingerprint:
            print(f"checkpoint {self.path} is from other settings; starting afresh", file=sys.stderr)
            self.path.unlink()
            return None
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in payload["trainable"].items():
                params[name].copy_(value)
        method.load_optimizer_state(optimizer, payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if payload["scaler"]:
            scaler.load_state_dict(payload["scaler"])
        method.load_state_dict(payload["method"])
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"]:
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        mask_gen.set_state(payload["mask_rng"])
        progress = Progress(**payload["progress"])
        print(f"resumed from {self.path} at optimizer step {progress.step}", file=sys.stderr)
        return progress


def plan_steps(n_examples: int, settings: TrainingSettings) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for this many training examples."""
    return optimizer_steps(n_examples, asdict(settings))


def forward_backward(model, method, batch: dict, precision: Precision, scaler,
                     accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: forward and loss under autocast, the method's extra loss, scaled backward.

    Returns (task loss, task loss + regularization), detached fp32 scalars left on the device: nothing here
    reads a value on the host, so a GPU never waits for the CPU (``LossLog`` reads them in batches and stops a
    diverging run). ``train`` and the benchmarks call this, so they time exactly the same step."""
    with precision.autocast():
        loss = model(**batch).loss
    extra = method.regularization(model)  # on the fp32 adapter weights, outside autocast
    total = loss.float() if extra is None else loss.float() + extra
    scaler.scale(total / accum_steps).backward()
    return loss.detach().float(), total.detach()


def to_device(batch: dict, device: torch.device) -> dict:
    """A collated batch on ``device``. To a GPU through pinned memory, without blocking: a copy from pageable
    memory would make the host wait for every kernel queued before it."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def micro_batch(model, method, examples: list[dict], collator, mask_gen: torch.Generator, device: torch.device,
                precision: Precision, scaler, accum_steps: int,
                progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch as ``train`` runs it: collate (masked-LM masks drawn from ``mask_gen``), count its tokens
    on the host before the copy, move it to the device, ``forward_backward``. Returns its (task loss, total
    loss), each divided by ``accum_steps``, on the device and unread."""
    batch = collator(examples, generator=mask_gen)
    progress.tokens += int(batch["attention_mask"].sum())
    progress.examples += len(examples)
    phase = method.compute_phase()
    progress.phase_tokens[phase] = progress.phase_tokens.get(phase, 0) + batch["input_ids"].numel()
    loss, total = forward_backward(model, method, to_device(batch, device), precision, scaler, accum_steps)
    return loss / accum_steps, total / accum_steps


class LossLog:
    """The loss of each optimizer step, kept on the device until read, then read in one go.

    Reading a value on the host is a sync: on a GPU, where a step of a small model takes milliseconds, a read
    per step would leave the device idle while the CPU queues the next step. The log is read every
    ``READ_EVERY`` steps, before each checkpoint and curve point, and at the end. A non-finite loss then stops
    the run with ``DivergenceError``, naming the first step it occurred at; no checkpoint or output is written
    after it, since every checkpoint reads the log first."""

    READ_EVERY = 32

    def __init__(self, progress: Progress, run: RunId):
        self.progress, self.run = progress, run
        self.pending: list[tuple[dict, torch.Tensor]] = []

    def add(self, step: int, epoch: int, lr: float, loss: torch.Tensor, total: torch.Tensor) -> bool:
        """Record step ``step``'s (task loss, total loss); True when the log is due to be read."""
        self.pending.append(({"step": step, "epoch": epoch, "lr": lr}, torch.stack([loss, total])))
        return len(self.pending) >= self.READ_EVERY

    def read(self) -> None:
        """Move the pending losses to ``progress.loss_curve``; DivergenceError at the first non-finite one."""
        if not self.pending:
            return
        values = torch.stack([v for _, v in self.pending]).tolist()
        for (point, _), (loss, total) in zip(self.pending, values):
            if not math.isfinite(total):
                self.pending = []
                raise DivergenceError(f"loss is {total} at optimizer step {point['step']} ({self.run}); "
                                      "lower the learning rate or check the data; no output was written")
            self.progress.loss_curve.append({"step": point["step"], "epoch": point["epoch"], "loss": loss,
                                             "lr": point["lr"]})
        self.pending = []


def optimizer_step(params, optimizer, scheduler, scaler, max_grad_norm: float, before_zero_grad=None) -> bool:
    """Unscale (fp16), clip, step, schedule, call ``before_zero_grad()`` (methods that read the step's
    gradients), zero the gradients. False when fp16 loss scaling skipped the step because the gradients
    overflowed (the scaler then lowers its scale); always True otherwise."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    if before_zero_grad is not None:
        before_zero_grad()
    optimizer.zero_grad(set_to_none=True)
    return scale is None or scaler.get_scale() >= scale


def untrained_metrics(model, precision: Precision = FP32) -> dict:
    """The training metrics of a run with no training loop (the untrained base): zero steps, no time, no
    training memory (NaN: there was no phase to measure), no optimizer state; the same keys as ``train``'s."""
    return {**run_metrics(Progress(), 0.0, float("nan"), model, None, float("nan"), 0, {}, precision, False, None),
            "optimizer_state_bytes": 0, "attempts": 0, "device_s": 0.0, "train_managed_mem_mb": 0.0}


def run_metrics(progress: Progress, train_time: float, peak_mb: float, model, optimizer, lr: float,
                resumed_from_step: int, flops_per_token: dict, precision: Precision,
                gradient_checkpointing: bool, heldout: HeldoutCurve | None) -> dict:
    """The training metrics of a run as it ended: one place for every key, whether the run trained or not."""
    curve, nan = progress.loss_curve, float("nan")
    return {
        "train_steps": progress.step,
        "train_examples_seen": progress.examples,
        "train_tokens_seen": progress.tokens,
        "train_time_s": train_time,
        "train_time_per_epoch_s": train_time / max(len(progress.epoch_times), 1),
        "epoch_times_s": progress.epoch_times,
        "epochs_run": len(progress.epoch_times),
        "train_tokens_per_s": progress.tokens / train_time if train_time else nan,
        "train_examples_per_s": progress.examples / train_time if train_time else nan,
        "peak_train_mem_mb": peak_mb,
        **stored_bytes(model, optimizer),
        "final_train_loss": curve[-1]["loss"] if curve else nan,
        "first_train_loss": curve[0]["loss"] if curve else nan,
        "loss_curve": curve,
        "lr": lr,
        "resumed_from_step": resumed_from_step,
        # Counted, not estimated: each kind of step counted once by torch's FLOP counter, per padded token.
        "train_flops": flops_so_far(progress, flops_per_token),
        "train_flops_per_token": flops_per_token,
        "train_tokens_by_phase": dict(progress.phase_tokens),
        "precision": precision.name,
        "precision_requested": precision.requested,
        "gradient_checkpointing": gradient_checkpointing,
        "fp16_skipped_steps": progress.skipped_steps,
        "heldout_curve": progress.heldout_curve,
        "heldout_metric": heldout.metric if heldout else None,
        "heldout_examples": len(heldout.rows) if heldout else 0,
        "curve_eval_time_s": progress.curve_eval_s,
    }


def flops_so_far(progress: Progress, flops_per_token: dict) -> float:
    """Training FLOPs of the steps run so far: each kind of step's counted FLOPs per token, times its tokens."""
    return sum(flops_per_token[p] * n for p, n in progress.phase_tokens.items())


def curve_point(curve: HeldoutCurve, model, device, progress: Progress, train_time: float,
                flops_per_token: dict) -> float:
    """Evaluate the held-out curve's point at ``progress.step``, record it; returns the seconds it took."""
    value, se, seconds, outputs = curve.point(model, device)
    point = {"step": progress.step, "train_time_s": train_time, "train_flops": flops_so_far(progress, flops_per_token),
             curve.metric: value, "se": se}
    if progress.heldout_outputs:
        point["gain_se"] = curve.gain_se(progress.heldout_outputs, outputs, value)
    progress.heldout_curve.append(point)
    progress.heldout_outputs = outputs
    progress.curve_eval_s += seconds
    return seconds


def enable_gradient_checkpointing(model) -> None:
    """Recompute each transformer layer in the backward pass (Hugging Face's own switch, on the base model
    under any adapter). Non-reentrant checkpointing: it needs no input that requires grad, which a frozen
    embedding does not give."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"training.gradient_checkpointing: {type(base).__name__} does not support it; "
                         "set it to false")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def memory_probe_batches(batches: list[list[int]], lengths: list[int]) -> set[int]:
    """Micro-batches of the first epoch whose memory is measured exactly: the first two, since the first
    optimizer step allocates the optimizer state and the second runs with it in place, and the longest
    batch, which holds the largest activations. Every other step repeats these allocations at a size in
    between, so their peak is the loop's; measuring all of them exactly would slow training (memory.py). A
    resumed run measures the probes it had not reached, and keeps the peaks of those it had (Progress), so
    it measures the same batches as an uninterrupted run."""
    if not batches:
        return set()
    longest = max(range(len(batches)), key=lambda i: max(lengths[j] for j in batches[i]))
    return {0, 1, longest} & set(range(len(batches)))


def train(model, method, rows: list[dict], collator, settings: TrainingSettings, lr: float, seed: int,
          device: torch.device, run: RunId, memory: PhaseMemory | None = None, checkpoint_dir=None,
          precision: Precision = FP32, tracking: Tracking | None = None, curve: HeldoutCurve | None = None) -> dict:
    """Train ``model`` in place and return the training metrics of the run.

    The forward pass and the loss run under ``precision``'s autocast (none in fp32); trainable weights
    and optimizer state stay fp32. ``memory`` measures the loop's peak (``peak_train_mem_mb``; NaN without
    it) on the probe micro-batches of ``memory_probe_batches``. With ``checkpoint_dir`` and
    ``settings.checkpoint_every`` > 0, a checkpoint is written every that many optimizer steps and a rerun
    resumes from it; the result equals an uninterrupted run on CPU. ``tracking`` receives the loss curve at
    each checkpoint and at the end (execution/tracking.py); its time is not training time. ``curve`` evaluates
    the held-out metric at its steps (execution/curve.py), the last one after ``method.finalize``; its time is
    not training time either.
    """
    from transformers import get_linear_schedule_with_warmup

    model.to(device)
    model.train()
    if settings.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = method.make_optimizer(params, lr, settings.weight_decay)
    scaler = precision.grad_scaler()
    per_epoch, total_steps = plan_steps(len(rows), settings)
    curve_at = set(curve.steps(total_steps)) if curve else set()
    scheduler = get_linear_schedule_with_warmup(optimizer, round(settings.warmup_ratio * total_steps), total_steps)
    lengths = [len(r["input_ids"]) for r in rows]
    mask_gen = torch.Generator().manual_seed(seed)  # masked-LM masks; dropout uses the global seed
    # The requested precision, not the resolved one: a retry that lands on another GPU type (auto: bf16 on one,
    # fp16 on another) resumes rather than restarts, and its attempts record what each ran.
    fingerprint = {"run": str(run), "settings": asdict(settings), "lr": lr, "examples": len(rows),
                   "precision": precision.requested, "deterministic": torch.are_deterministic_algorithms_enabled(),
                   "method_params": method.params}
    ckpt = None
    if checkpoint_dir is not None and settings.checkpoint_every > 0:
        ckpt = Checkpointer(checkpoint_dir, settings.checkpoint_every, fingerprint)
    attempts = Attempts(checkpoint_dir, fingerprint, device_name(device), device.type, precision.name)
    restored = ckpt.load(model, optimizer, scheduler, scaler, method, mask_gen) if ckpt else None
    progress = restored or Progress()
    resumed_from = progress.step  # read now: ``progress`` is the restored object, and advances as the run trains
    attempts.begin(progress.step, progress.curve_eval_s, method.optimizer_ran)
    losses = LossLog(progress, run)
    tracking = tracking or Tracking()
    tracking.begin(progress.step)
    method.on_train_start(model, progress.step, total_steps, lambda: calibration_batches(rows, collator))
    # FLOPs per token do not depend on the batch size (the counter counts matmuls, linear in the rows), so two
    # rows of the first batch, at its padded width, are counted rather than a whole batch.
    first = collator([rows[j] for j in range(min(settings.batch_size, len(rows)))],
                     generator=torch.Generator().manual_seed(seed))
    flops_per_token = step_flops_per_token(model, method, {k: v[:2].to(device) for k, v in first.items()}, precision)

    bar = tqdm(total=total_steps, initial=progress.step, desc=str(run), file=sys.stderr, mininterval=5)
    probe_peaks = progress.probe_peaks  # training memory: peaks of the probe micro-batches, measured exact
    segment_start = time.perf_counter()
    try:
        while progress.epoch < settings.epochs and progress.step < total_steps:
            epoch_start = time.perf_counter()
            order = np.random.default_rng([seed, progress.epoch])
            batches = length_grouped_batches(lengths, settings.batch_size, order)
            probes = ({i for i in memory_probe_batches(batches, lengths) if i >= progress.batch}
                      if memory is not None and progress.epoch == 0 else set())
            loss = total = None  # the optimizer step's losses so far, on the device
            for i in range(progress.batch, len(batches)):
                idx = batches[i]
                if i in probes:
                    memory.start(exact=True)
                step_loss, step_total = micro_batch(model, method, [rows[j] for j in idx], collator, mask_gen, device,
                                                    precision, scaler, settings.grad_accum_steps, progress)
                loss, total = (step_loss, step_total) if loss is None else (loss + step_loss, total + step_total)
                if (i + 1) % settings.grad_accum_steps and i + 1 < len(batches):
                    if i in probes:
                        probe_peaks.append(memory.stop())
                    continue
                step = progress.step + 1
                if not optimizer_step(params, optimizer, scheduler, scaler, settings.max_grad_norm,
                                      lambda: method.on_gradients(model, step, total_steps)):
                    progress.skipped_steps += 1
                progress.step += 1
                progress.batch = i + 1
                if i in probes:
                    probe_peaks.append(memory.stop())
                method.on_optimizer_step(model, progress.step, total_steps)
                if losses.add(progress.step, progress.epoch, scheduler.get_last_lr()[0], loss, total):
                    losses.read()
                    attempts.beat(progress.step, progress.curve_eval_s)
                    bar.set_postfix(loss=f"{progress.loss_curve[-1]['loss']:.4f}", refresh=False)
                loss = total = None
                bar.update(1)
                if progress.step >= total_steps:
                    break
                if progress.step in curve_at:  # before a checkpoint of the same step, which then holds the point
                    losses.read()
                    now = time.perf_counter()
                    spent = curve_point(curve, model, device, progress, progress.elapsed_s + now - segment_start,
                                        flops_per_token)
                    segment_start, epoch_start = segment_start + spent, epoch_start + spent
                if ckpt and ckpt.due(progress.step):
                    losses.read()
                    now = time.perf_counter()
                    progress.elapsed_s += now - segment_start
                    progress.epoch_elapsed_s += now - epoch_start
                    segment_start = epoch_start = now
                    ckpt.save(model, optimizer, scheduler, scaler, method, mask_gen, progress)
                    attempts.beat(progress.step, progress.curve_eval_s)
                    logging_s = tracking.curve(progress.loss_curve, progress.heldout_curve)
                    segment_start, epoch_start = segment_start + logging_s, epoch_start + logging_s
            progress.epoch_times.append(progress.epoch_elapsed_s + time.perf_counter() - epoch_start)
            progress.epoch_elapsed_s = 0.0
            progress.epoch += 1
            progress.batch = 0
        losses.read()
    except Exception:
        bar.close()
        losses.read()  # a method's hook may fail on weights a non-finite loss made NaN: name the cause
        raise
    method.finalize(model)
    train_time = progress.elapsed_s + time.perf_counter() - segment_start
    bar.close()
    if progress.step in curve_at:  # the loop stops before the last step's point: taken here, on the model as trained
        curve_point(curve, model, device, progress, train_time, flops_per_token)
    tracking.curve(progress.loss_curve, progress.heldout_curve)
    attempts.beat(progress.step, progress.curve_eval_s)
    managed_mb = managed_bytes(optimizer) / 2**20
    peak = max(probe_peaks) if probe_peaks else float("nan")
    if memory is not None and memory.kind == "cuda_allocated":
        peak += managed_mb  # paged optimizer state: device memory the allocator's counter never sees
    return {**run_metrics(progress, train_time, peak, model, optimizer, lr, resumed_from,
                          flops_per_token, precision, settings.gradient_checkpointing, curve),
            **attempts.summary(), "train_managed_mem_mb": managed_mb}

