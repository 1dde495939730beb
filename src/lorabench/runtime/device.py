"""The process a job runs in: its device, its torch threads and the seeds of every RNG it touches."""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches (data order, adapter init, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


#: cuBLAS's deterministic workspace setting (the CUDA docs' "Results reproducibility"): two 4 MiB buffers.
CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic(on: bool) -> None:
    """``deterministic: true``: torch's deterministic kernels only (an op without one raises, naming itself), and
    the cuBLAS workspace that makes its matmuls reproducible. It must come before the first cuBLAS call, so a job
    sets it first. What it costs and guarantees: docs/methodology.md, "Determinism"."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def set_threads(threads: int) -> int:
    """torch threads = min(Snakemake threads, CPUs): more threads than cores only slows CPU runs."""
    n = max(1, min(int(threads), os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config 'device: cuda' but no CUDA device is visible; use 'device: auto' or 'cpu'")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu: {model} ({torch.get_num_threads()} threads)"
