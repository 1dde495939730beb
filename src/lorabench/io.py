"""Files and logs, without torch: JSON read and written atomically, folders moved into place whole, sizes on
disk, package versions, a job's log. The CPU-only analysis jobs read their inputs through this module."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np


def _temp_prefix(final: Path) -> str:
    """Prefix of a temporary sibling of ``final``: host and process, so that a later writer can tell a killed
    writer's leftovers from a live writer's work (two jobs may fill one cache at once)."""
    return f".{final.name}.{socket.gethostname()}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(final: Path) -> list[Path]:
    """Remove the temporary siblings of ``final`` (``write_json``'s files, ``atomic_dir``'s folders) that a writer
    on this host left when it was killed (its process is gone); a live writer's, or another host's, stay.
    Returns what was removed."""
    head = f".{final.name}.{socket.gethostname()}."
    removed = []
    for path in final.parent.glob(glob.escape(head) + "*"):
        pid = path.name[len(head):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (temp file in the same folder, then rename), so a killed job leaves no half file;
    a temp file a killed writer left is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
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
    always one writer's complete output, never a mix. A temp folder a killed writer left is removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final), suffix=".tmp"))
    try:
        yield tmp
        for _ in range(10):
            try:
                os.rename(tmp, final)  # atomic; fails if final exists and is not empty
                break
            except OSError:
                trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final), suffix=".old"))
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
