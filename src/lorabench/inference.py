"""Inference costs: batch-1 latency, batched throughput, peak memory, size on disk as deployed."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from lorabench.utils import dir_size_mb


@torch.no_grad()
def latency_ms(model, rows, collator, device, n: int = 50, warmup: int = 5) -> dict:
    """Median and p95 forward latency per example at batch size 1, over ``n`` examples after warm-up."""
    model.eval()
    times = []
    for i in range(warmup + n):
        batch = model_inputs(collator, [rows[i % len(rows)]], device)
        _sync(device)
        start = time.perf_counter()
        model(**batch)
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return {"latency_ms": float(np.median(times)), "latency_p95_ms": float(np.percentile(times, 95)),
            "latency_examples": n}


@torch.no_grad()
def throughput_per_s(model, rows, collator, device, batch_size: int, max_examples: int = 64) -> float:
    """Examples per second through the forward pass at ``batch_size`` (after one warm-up batch)."""
    model.eval()
    rows = rows[:max_examples]
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for chunk in batches[:1]:
        model(**model_inputs(collator, chunk, device))
    _sync(device)
    start = time.perf_counter()
    for chunk in batches:
        model(**model_inputs(collator, chunk, device))
    _sync(device)
    return len(rows) / (time.perf_counter() - start)


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


def measure(model, method, rows, collator, device, batch_size: int, n_latency: int, adapter_mb: float) -> dict:
    """Latency and throughput unmerged, then merged where the method has a mergeable adapter.

    ``model_size_mb`` is the model as deployed: merged weights for mergeable adapters, the base (e.g.
    4-bit for QLoRA) plus the adapter files for the others, the model itself for full fine-tuning."""
    out = latency_ms(model, rows, collator, device, n_latency)
    out["throughput_per_s"] = throughput_per_s(model, rows, collator, device, batch_size)
    out["throughput_batch_size"] = batch_size
    deployed = model
    if method.mergeable:
        deployed = model.merge_and_unload()
        merged = latency_ms(deployed, rows, collator, device, n_latency)
        out["latency_merged_ms"] = merged["latency_ms"]
        out["latency_merged_p95_ms"] = merged["latency_p95_ms"]
        out["throughput_merged_per_s"] = throughput_per_s(deployed, rows, collator, device, batch_size)
    if method.mergeable or not method.saves_adapter:
        out["model_size_mb"] = deployed_size_mb(deployed)
    else:
        out["model_size_mb"] = deployed_size_mb(model.unload()) + adapter_mb  # base as loaded, then the adapter
    return out
