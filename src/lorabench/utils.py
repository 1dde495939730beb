"""Small shared helpers: seeding, atomic file writes, package versions, devices, logs."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches (data order, adapter init, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> int:
    """torch threads = min(Snakemake threads, CPUs): more threads than cores only slows CPU runs."""
    n = max(1, min(int(threads), os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (temp file in the same folder, then rename), so a killed job leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(f"not JSON serializable: {type(obj)}")


def read_json(path: str | Path):
    with open(path) as fh:
        return json.load(fh)


@contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary folder beside ``final``; move it into place only if the block succeeds.

    Readers never see a half-written folder. Two writers of the same folder (two jobs filling one
    cache) each fill their own temp folder; each then swaps its complete folder in, so the result is
    always one writer's complete output, never a mix.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        for _ in range(10):
            try:
                os.rename(tmp, final)  # atomic; fails if final exists and is not empty
                break
            except OSError:
                trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
                try:
                    os.replace(final, trash / "x")  # move the old one aside atomically
                except FileNotFoundError:
                    pass  # another writer moved it already; retry the rename
                shutil.rmtree(trash, ignore_errors=True)
        else:
            raise OSError(f"could not move {tmp} into place at {final}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "fvcore", "snakemake")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config 'device: cuda' but no CUDA device is visible; use 'device: auto' or 'cpu'")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


def dir_size_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def log_to(path: str | Path) -> None:
    """Send this job's stdout and stderr (tqdm, warnings, tracebacks) to its Snakemake log file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w", buffering=1)
    sys.stdout = sys.stderr = fh
    os.dup2(fh.fileno(), 1)
    os.dup2(fh.fileno(), 2)
