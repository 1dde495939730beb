"""What a run will do, said before its first job: how many runs and jobs, the precision ``auto`` resolves to on
this machine and why, and how long this config took on the CPU classes it was measured on
(docs/measurements/run-times.yaml), so that a user on a slow machine knows before waiting."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from lorabench.runtime.device import device_name, resolve_device
from lorabench.runtime.precision import native_bf16, resolve_precision

RUN_TIMES = Path(__file__).resolve().parents[3] / "docs" / "measurements" / "run-times.yaml"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_class(device: torch.device) -> str:
    """The class run times are recorded by: cuda, avx512_bf16 (native bf16 on the CPU), avx2, or cpu."""
    if device.type == "cuda":
        return "cuda"
    if native_bf16(device):
        return "avx512_bf16"
    return "avx2" if "avx2" in cpu_flags() else "cpu"


def precision_reason(requested: str, device: torch.device) -> str:
    """'<precision> on <device>: <why>' for the config's ``precision`` on this machine (each job resolves
    ``auto`` on its own device: on a cluster, the nodes' GPUs, not the machine that submits)."""
    chosen = resolve_precision(requested, device)
    return f"{chosen.name} on {device_name(device)}: {chosen.reason}"


def measured_times(config_name: str, path: Path = RUN_TIMES) -> list[dict]:
    """The dated run times of ``config_name`` (a path relative to the repository, e.g. config.yaml)."""
    if not path.exists():
        return []
    return [e for e in yaml.safe_load(path.read_text()) or [] if e["config"] == config_name]


def plan_lines(config: dict, config_name: str, train_jobs: int, other_torch_jobs: int,
               train_processes: int | None = None) -> list[str]:
    """The lines a run prints before its first job; ``train_processes``: the jobs the training runs are grouped
    in (config ``seeds_per_job``), when fewer than the runs."""
    seeds = len(config["seeds"])
    grouped = (f" in {train_processes} jobs of up to {config['seeds_per_job']} seeds each"
               if train_processes is not None and train_processes < train_jobs else "")
    lines = [f"{train_jobs} training runs ({seeds} seed{'s' if seeds != 1 else ''}){grouped} and {other_torch_jobs} "
             f"other torch jobs (efficiency timing, predictors), {config['threads']} threads each; Snakemake runs "
             "only those whose outputs are missing or stale"]
    if config.get("seeds_per_job", 1) > 1 and not grouped and seeds > 1:
        lines.append("seeds_per_job: one job per seed on a cluster executor, so that the seeds run in parallel")
    try:
        device = resolve_device(config["device"])
    except RuntimeError:  # device: cuda, submitted from a machine without one (a cluster's login node)
        return [f"lorabench: {line}" for line in lines + [
            f"precision: {config['precision']}, resolved by each job on its GPU (none visible here)"]]
    here = machine_class(device)
    lines.append(f"precision: {precision_reason(config['precision'], device)}; each job resolves it on its own "
                 "device")
    times = measured_times(config_name)
    if not times:
        lines.append(f"no measured run time of {config_name} (docs/measurements/run-times.yaml)")
    for e in times:
        mark = "  <- this machine's class" if e["cpu_class"] == here else ""
        lines.append(f"{config_name} from scratch took {e['minutes']} min on a 2-core {e['cpu_class']} machine "
                     f"({e['precision']}, {e['date']}; {e['note']}){mark}")
    if times and here not in {e["cpu_class"] for e in times}:
        lines.append(f"this machine ({here}) has no measured time for {config_name}")
    return [f"lorabench: {line}" for line in lines]
