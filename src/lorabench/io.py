"""Files and logs, without torch: JSON read and written atomically, folders moved into place whole, sizes on
disk, package versions, a job's log. The CPU-only analysis jobs read their inputs through this module."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np


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


def snapshot_path(snapshots: str, kind: str, repo: str) -> Path:
    """Where a hub repo lives inside a snapshot folder (kind is 'models' or 'datasets')."""
    return Path(snapshots) / kind / repo


PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "fvcore", "snakemake")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def dir_size_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def log_to(path: str | Path) -> None:
    """Send this job's stdout and stderr (tqdm, warnings, tracebacks) to its Snakemake log file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w", buffering=1)
    sys.stdout = sys.stderr = fh
    os.dup2(fh.fileno(), 1)
    os.dup2(fh.fileno(), 2)
