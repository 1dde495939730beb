"""Several seeds of one (method, dataset) trained by one job, one after another (config ``seeds_per_job``): the
interpreter, the imports and Snakemake's per-job cost are paid once per chunk instead of once per seed.

Each seed trains in a child process forked once the libraries are imported: it starts from the state a job of
its own has after its imports, so it measures the same memory (a seed trained in the process that trained the
previous one finds the libraries' workspaces already resident and reads less: docs/measurements/chaos.md,
2026-12-07) and ends the same way (the child exits with ``os._exit``; the trackers close inside the run). The
child maps its parent's resident library pages back first (runtime/memory.py, resident_file_pages). Where the
imports initialized CUDA, which a forked child cannot use again, the seeds train in the job's own process.

A kill between two seeds must lose only the unfinished one, but Snakemake deletes every output of a job that
was killed or failed before it runs it again. So each seed trains into its own stage folder, beside its
checkpoint and outside the outputs (``<checkpoint_dir>.finished``), whose train_metrics.json, written last,
marks it complete. Its files are then hard-linked into the seed's outputs (no copy, no extra disk). A rerun of
the job links a complete stage back instead of training it again, when the stage was trained with the same
settings and inputs (``settings.json``). The stages go once the whole workflow succeeds
(``remove_finished_stages``, the rule file's ``onsuccess``), not at the job's end: a kill after the job's
last write but before Snakemake records the job as done would otherwise retrain every seed of the chunk.

torch is imported only by ``train_seeds``: the workflow's main process calls ``remove_finished_stages``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

#: Output role -> file name, as the train rule names them.
OUTPUTS = {"model": "model", "metrics": "train_metrics.json", "evaluation": "eval_metrics.json",
           "predictions": "predictions.csv"}
SETTINGS = "settings.json"


def stage_of(checkpoint_dir) -> Path:
    return Path(f"{checkpoint_dir}.finished")


def _identity(path) -> list:
    """What tells a replaced input from the one a stage was trained on: inode and modification time (inputs are
    swapped into place whole, lorabench.io.atomic_dir)."""
    st = os.stat(path)
    return [st.st_ino, st.st_mtime_ns]


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as hard links to ``source``'s files (a copy where the file system cannot link)."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for child in source.iterdir():
            _link_tree(child, target / child.name)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _restorable(stage: Path, settings: dict) -> bool:
    """A complete stage trained with ``settings``; an incomplete or other-settings stage is removed."""
    if (stage / OUTPUTS["metrics"]).exists() and (stage / SETTINGS).exists():
        if json.loads((stage / SETTINGS).read_text()) == settings:
            return True
        print(f"{stage}: trained with other settings or inputs; training again", flush=True)
    shutil.rmtree(stage, ignore_errors=True)
    return False


def _train_child(run: dict, seed: int, started_at: float, process: tuple, pages: list) -> None:
    """In the forked child: one seed's train_run, its start-up counted from ``started_at``, with the parent's
    resident library pages mapped back first (runtime/memory.py, resident_file_pages)."""
    from lorabench.execution.jobs import PhaseClock, train_run
    from lorabench.runtime.memory import refault_file_pages

    refault_file_pages(pages)
    PhaseClock.started_at, PhaseClock.process = started_at, process
    train_run(**run, seed=seed)


def train_seeds(*, seeds: list[int], outputs: dict[str, list], checkpoint_dirs: list, **run) -> list[dict]:
    """``train_run`` (execution/jobs.py) for each seed, with ``outputs[role][i]`` the i-th seed's output of that
    role and ``checkpoint_dirs[i]`` its checkpoint; ``run`` holds the other arguments, the same for every seed.
    Returns each seed's training metrics. A seed that fails stops the job; the seeds before it stay staged."""
    import multiprocessing
    import time

    import torch

    from lorabench.io import read_json, write_json
    from lorabench.runtime.clock import process_started_at
    from lorabench.runtime.memory import import_libraries, resident_file_pages

    from lorabench.execution.jobs import PhaseClock  # once, before the forks: the children inherit it

    import_libraries()  # likewise: what each seed's job would import before its memory baseline
    process = (os.getpid(), process_started_at())
    job_started = PhaseClock.started_at or process[1]  # set where this job is a child of the warm process
    fork = multiprocessing.get_context("fork")
    inputs = {"model": _identity(run["model_dir"]), "tokenized": _identity(run["tokenized_dir"]),
              **{role: _identity(path) for role, path in (run.get("method_inputs") or {}).items()}}
    fixed = {k: v for k, v in run.items() if k not in ("model_dir", "tokenized_dir")}
    metrics, first = [], True
    for i, seed in enumerate(seeds):
        stage = stage_of(checkpoint_dirs[i])
        settings = json.loads(json.dumps({"run": fixed, "seed": seed, "inputs": inputs}, sort_keys=True, default=str))
        if _restorable(stage, settings):
            print(f"seed {seed}: finished in an earlier attempt of this job; restored from {stage}", flush=True)
            shutil.rmtree(checkpoint_dirs[i], ignore_errors=True)  # left if that attempt was killed just after
        else:
            write_json(stage / SETTINGS, settings)
            paths = {"out_model_dir": stage / OUTPUTS["model"], "out_metrics": stage / OUTPUTS["metrics"],
                     "out_eval_metrics": stage / OUTPUTS["evaluation"],
                     "out_predictions": stage / OUTPUTS["predictions"]}
            args = ({**run, **paths, "checkpoint_dir": checkpoint_dirs[i]}, seed,
                    job_started if first else time.time(), process)
            if torch.cuda.is_initialized():  # CUDA cannot be used again in a forked child: train here
                _train_child(*args, [])
            else:
                child = fork.Process(target=_train_child, args=(*args, resident_file_pages()))
                child.start()
                child.join()
                if child.exitcode != 0:
                    raise RuntimeError(f"seed {seed} of {run['method_name']} on {run['dataset_name']} failed (exit "
                                       f"status {child.exitcode}; its error is above); the seeds before it stay "
                                       "finished and are not trained again on a rerun")
            first = False
            print(f"seed {seed}: trained", flush=True)
        for role, name in OUTPUTS.items():
            _link_tree(stage / name, Path(outputs[role][i]))
        metrics.append(read_json(stage / OUTPUTS["metrics"]))
    return metrics


def remove_finished_stages(runs) -> int:
    """For each (checkpoint folder, the seed's train_metrics.json output), remove the seed's stage if its files
    are in place as the outputs; the number removed. For the workflow's ``onsuccess``: every job it ran
    completed."""
    removed = 0
    for checkpoint_dir, output in runs:
        stage, output = stage_of(checkpoint_dir), Path(output)
        done = stage / OUTPUTS["metrics"]
        if done.exists() and output.exists() and os.path.samefile(done, output):
            shutil.rmtree(stage, ignore_errors=True)
            removed += 1
    return removed
