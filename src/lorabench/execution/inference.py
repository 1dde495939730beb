"""Inference costs: batch-1 latency, batched throughput, size on disk as deployed.

Timed once per (method, dataset) in the efficiency job, in ``repeats`` rounds so that each number gets a
95% interval over rounds; forward passes run in the run's precision (autocast)."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from lorabench.analysis.stats import t_interval
from lorabench.io import dir_size_mb
from lorabench.runtime.precision import FP32, Precision


@torch.no_grad()
def latency_times_ms(model, rows, collator, device, n: int = 50, precision: Precision = FP32) -> list[float]:
    """Forward latency (ms) of the first ``n`` examples at batch size 1, one by one."""
    model.eval()
    times = []
    for i in range(n):
        batch = model_inputs(collator, [rows[i % len(rows)]], device)
        _sync(device)
        start = time.perf_counter()
        with precision.autocast():
            model(**batch)
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


@torch.no_grad()
def throughput_per_s(model, rows, collator, device, batch_size: int, max_examples: int = 64,
                     precision: Precision = FP32, warm_up: bool = True, min_time_s: float = 0.0) -> float:
    """Examples per second through the forward pass at ``batch_size`` (after one warm-up batch, unless the
    caller has already run these shapes), over the first ``max_examples`` examples, passed through again until
    the round has lasted ``min_time_s``: on a GPU one pass over 64 examples takes a few milliseconds, mostly
    launch overhead and timer noise, so a round is timed for long enough to mean something."""
    model.eval()
    rows = rows[:max_examples]
    batches = [model_inputs(collator, rows[i : i + batch_size], device) for i in range(0, len(rows), batch_size)]
    with precision.autocast():
        if warm_up:
            model(**batches[0])
        _sync(device)
        start, passes = time.perf_counter(), 0
        while passes == 0 or time.perf_counter() - start < min_time_s:
            for batch in batches:
                model(**batch)
            passes += 1
            _sync(device)
    return passes * len(rows) / (time.perf_counter() - start)


@torch.no_grad()
def inference_memory(model, rows, collator, device, batch_size: int, memory, precision: Precision = FP32) -> dict:
    """Peak memory of one forward over the first ``batch_size`` examples (the throughput batch) and of one
    at batch 1 (a deployed model answering one request), each measured exact (memory.py) before any timing,
    so that neither merging nor saving the model counts as inference. Each after an unmeasured forward of the
    same shapes: a process's first forward on a GPU also allocates cuBLAS's handles and workspace and picks its
    kernels, once, which is start-up, not what a deployed model needs per request."""
    model.eval()
    out = {}
    for key, chunk in (("peak_infer_mem_mb", rows[:batch_size]), ("peak_infer_batch1_mem_mb", rows[:1])):
        batch = model_inputs(collator, chunk, device)
        with precision.autocast():
            model(**batch)  # the warm-up
        _sync(device)
        memory.start(exact=True)
        with precision.autocast():
            model(**batch)
        out[key] = memory.stop()
        del batch
    return out


def model_inputs(collator, chunk, device) -> dict:
    """A collated batch without labels, on the device: what a forward pass for prediction takes."""
    batch = collator(chunk)
    batch.pop("labels")
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def deployed_size_mb(model) -> float:
    """Save the model as it would be deployed and measure the files."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return dir_size_mb(tmp)


def timed(model, rows, collator, device, batch_size: int, n_latency: int, repeats: int, precision: Precision = FP32,
          prefix: str = "", min_time_s: float = 0.0) -> dict:
    """Latency and throughput in ``repeats`` rounds over the same examples: the median and p95 over every
    timed forward, with a 95% t-interval over the rounds' medians (latency) and over the rounds (throughput).

    One untimed pass first: each new input shape costs kernel selection once (oneDNN, cuBLAS), which is
    start-up, not latency."""
    latency_times_ms(model, rows, collator, device, n_latency, precision)
    medians, all_times, rates = [], [], []
    for round_ in range(repeats):
        times = latency_times_ms(model, rows, collator, device, n_latency, precision)
        medians.append(float(np.median(times)))
        all_times += times
        rates.append(throughput_per_s(model, rows, collator, device, batch_size, precision=precision,
                                      warm_up=round_ == 0,  # one warm-up batch per timing, not per round
                                      min_time_s=min_time_s))
    _, _, lat_lo, lat_hi = t_interval(medians)
    thr, _, thr_lo, thr_hi = t_interval(rates)
    return {
        f"latency{prefix}_ms": float(np.median(all_times)),
        f"latency{prefix}_p95_ms": float(np.percentile(all_times, 95)),
        f"latency{prefix}_ms_ci95_low": lat_lo, f"latency{prefix}_ms_ci95_high": lat_hi,
        f"throughput{prefix}_per_s": thr, f"throughput{prefix}_per_s_ci95_low": thr_lo,
        f"throughput{prefix}_per_s_ci95_high": thr_hi,
    }


def measure(model, method, rows, collator, device, batch_size: int, n_latency: int, adapter_mb: float,
            repeats: int = 5, precision: Precision = FP32, min_time_s: float = 0.0) -> dict:
    """Latency and throughput unmerged, then merged where the method has a mergeable adapter.

    ``model_size_mb`` is the model as deployed: merged weights for mergeable adapters, the base (e.g.
    4-bit for QLoRA) plus the adapter files for the others, the model itself for full fine-tuning."""
    out = timed(model, rows, collator, device, batch_size, n_latency, repeats, precision, min_time_s=min_time_s)
    out.update(latency_examples=n_latency, timing_repeats=repeats, throughput_batch_size=batch_size,
               throughput_min_time_s=min_time_s)
    deployed = model
    if method.mergeable:
        deployed = model.merge_and_unload()
        out.update(timed(deployed, rows, collator, device, batch_size, n_latency, repeats, precision, "_merged",
                         min_time_s))
    if method.mergeable or not method.saves_adapter:
        out["model_size_mb"] = deployed_size_mb(deployed)
    else:
        out["model_size_mb"] = deployed_size_mb(model.unload()) + adapter_mb  # base as loaded, then the adapter
    return out
