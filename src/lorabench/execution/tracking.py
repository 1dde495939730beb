"""Training runs logged to the trackers people already use, offline by default, under the results folder:

- ``tensorboard``: event files under ``results/tensorboard/<dataset>/<method>/seed<seed>``;
- ``mlflow``: a file store, ``results/mlruns`` (``$MLFLOW_TRACKING_URI`` instead, when set);
- ``wandb``: offline runs under ``results/wandb/<dataset>/<method>/seed<seed>`` (``$WANDB_MODE`` decides).

One tracked run per (dataset, method, seed), named ``<dataset>/<method>/seed<seed>``, in one experiment per
results folder (``lorabench-<folder that holds results/>``). It holds the run's config slice as parameters,
the loss and learning rate per optimizer step (``train/...``), the held-out curve (``heldout/<metric>``, with
the training time and FLOPs so far) at its steps, the final metrics under the summary's column names, and the
device and package versions as tags.

The trainer hands the curves over at each checkpoint and at the end of training, never per step, so a
training step costs nothing more (docs/measurements/tracking.md), and the time spent logging is not training
time. What was logged is recorded next to the checkpoint (``tracking.json``): a run resumed from its
checkpoint continues its tracked runs (the same run, not a second) from the step after the last one logged,
with no gap and no repeat; a run that starts afresh replaces any tracked run of its name, so that the
trackers hold what the summary holds.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path

from lorabench.io import read_json, write_json

STATE_FILE = "tracking.json"


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested settings as dotted keys with scalar values (lists as JSON), the form every tracker takes."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def final_values(metrics: dict) -> dict:
    """The metrics a tracker logs at the end: finite numbers, under the names summary.csv gives them."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed" and math.isfinite(v)}


class TensorBoardRun:
    durable = True  # flush() writes the event file: what was logged survives a killed job
    def __init__(self, results: Path, experiment: str, name: str, params: dict):
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.dir = results / "tensorboard" / name
        self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        self.writer = None

    def open(self, fresh: bool, run_id: str | None) -> str:
        if fresh:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.writer = self._writer_class(str(self.dir))  # a resumed run adds an event file; readers merge them
        return str(self.dir)

    def started(self, tags: dict) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in {**self.params, **tags}.items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + table, 0)

    def curve(self, rows: list[tuple[int, dict]]) -> None:
        for step, values in rows:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def final(self, values: dict, step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        for key, value in values.items():
            self.writer.add_scalar(f"final/{key}", value, step)
        # The HParams tab: this run's settings against its headline metrics, in its own event file.
        headline = {f"final/{k}": values[k] for k in ("accuracy", "perplexity", "train_time_s") if k in values}
        for summary in hparams(self.params, headline):
            self.writer.file_writer.add_summary(summary)

    def close(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowRun:
    durable = True  # the file store writes each batch before log_batch returns
    def __init__(self, results: Path, experiment: str, name: str, params: dict):
        # MLflow 3 keeps the file store in maintenance mode and asks for an opt-in. It is the store that suits
        # this workflow: one folder per run, so concurrent jobs on a cluster's shared filesystem never contend
        # for one SQLite file (which NFS locks poorly), and no server to run.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from filelock import FileLock
        from mlflow.tracking import MlflowClient

        self.store = results / "mlruns"
        self.store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or self.store.resolve().as_uri())
        self.name, self.params = name, params
        with FileLock(str(self.store / ".experiment.lock")):  # two jobs must not create two experiments
            found = self.client.get_experiment_by_name(experiment)
            self.experiment = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = None

    def open(self, fresh: bool, run_id: str | None) -> str:
        if not fresh and run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        earlier = self.client.search_runs([self.experiment], filter_string=f"attributes.run_name = '{self.name}'")
        for run in earlier:
            self.client.delete_run(run.info.run_id)
        self.run_id = self.client.create_run(self.experiment, run_name=self.name).info.run_id
        return self.run_id

    def started(self, tags: dict) -> None:
        from mlflow.entities import Param, RunTag

        params = [Param(k, str(v)[:6000]) for k, v in self.params.items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _metrics(self, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per call
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def curve(self, rows: list[tuple[int, dict]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics([Metric(k, v, now, step) for step, values in rows for k, v in values.items()])

    def final(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics([Metric(k, v, now, step) for k, v in values.items()])

    def close(self, ok: bool) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class WandbRun:
    # W&B's service process buffers the offline file: a SIGKILLed job can leave it with nothing past its
    # header. A resumed run therefore writes its offline record afresh, under the same id, from step 1 (the
    # checkpoint holds the whole curve); online, W&B keeps the steps it already has and drops the repeats.
    durable = False
    def __init__(self, results: Path, experiment: str, name: str, params: dict):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb = wandb
        self.dir = results / "wandb" / name
        self.experiment, self.name, self.params = experiment, name, params
        self.run = None

    def open(self, fresh: bool, run_id: str | None) -> str:
        shutil.rmtree(self.dir, ignore_errors=True)  # afresh, or the unfinished record of a killed job
        if fresh or not run_id:
            run_id = secrets.token_hex(4)  # W&B's own form: 8 lower-case alphanumerics
        self.dir.mkdir(parents=True, exist_ok=True)
        # The same id with resume="allow": a resumed job continues its run. No system-metrics sampler: the
        # jobs measure device and memory themselves, and a sampler competes with training for the CPU
        # (docs/measurements/tracking.md).
        self.run = self.wandb.init(project=self.experiment, dir=str(self.dir), name=self.name, id=run_id,
                                   resume="allow", group=self.name.rsplit("/", 1)[0], config=self.params,
                                   settings=self.wandb.Settings(console="off", save_code=False, disable_git=True,
                                                                x_disable_stats=True))
        return run_id

    def started(self, tags: dict) -> None:
        self.run.config.update({f"tag.{k}": v for k, v in tags.items()}, allow_val_change=True)

    def curve(self, rows: list[tuple[int, dict]]) -> None:
        for step, values in rows:
            self.run.log(values, step=step)

    def final(self, values: dict, step: int) -> None:
        self.run.summary.update(values)

    def close(self, ok: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)


BACKENDS = {"tensorboard": TensorBoardRun, "mlflow": MlflowRun, "wandb": WandbRun}


def experiment_name(results: Path) -> str:
    """One experiment per results folder, named after the folder that holds it (the workflow's directory)."""
    return f"lorabench-{Path(results).resolve().parent.name}"


class Tracking:
    """The tracked runs of one training run, one per configured tracker; no trackers, no work.

    ``begin(step)`` is called once the trainer knows where it starts (0, or the step it resumed at),
    ``curve(points, heldout)`` at each checkpoint and at the end, ``finish(metrics)`` when the job's metrics are
    complete, ``close(ok)`` always."""

    def __init__(self, trackers=(), results="results", name: str = "", params: dict | None = None,
                 tags: dict | None = None, state_dir=None):
        results = Path(results)
        flat = flatten(params or {})
        self.backends = {t: BACKENDS[t](results, experiment_name(results), name, flat) for t in trackers}
        self.tags = flatten(tags or {})
        self.state_path = Path(state_dir) / STATE_FILE if state_dir is not None and trackers else None
        self.logged = dict.fromkeys(self.backends, 0)  # last step each tracker holds
        self.seconds = 0.0  # spent logging the curve (benchmarks/tracking_overhead.py)
        self.ids = {}

    def _save_state(self) -> None:
        if self.state_path is not None:
            kept = {t: step if self.backends[t].durable else 0 for t, step in self.logged.items()}
            write_json(self.state_path, {"logged": kept, "ids": self.ids})

    def begin(self, step: int) -> None:
        if not self.backends:
            return
        state = read_json(self.state_path) if step and self.state_path and self.state_path.exists() else None
        fresh = state is None
        if state:
            self.ids = state["ids"]
            self.logged.update({t: step for t, step in state["logged"].items() if t in self.backends})
        for tracker, backend in self.backends.items():
            new = fresh or tracker not in self.ids  # a tracker added to a run that resumes starts its run
            self.ids[tracker] = backend.open(new, self.ids.get(tracker))
            if new:
                backend.started(self.tags)
        self._save_state()

    def curve(self, points: list[dict], heldout: list[dict] = ()) -> float:
        """Log the loss curve's points after the last one logged, each step with its held-out point where the
        held-out curve has one (its steps are steps of the loss curve: one record per step, in step order, as
        W&B's step axis needs); returns the seconds it took (not training time)."""
        if not self.backends:
            return 0.0
        start = time.perf_counter()
        held = {p["step"]: p for p in heldout}
        for tracker, backend in self.backends.items():
            new = [p for p in points if p["step"] > self.logged[tracker]]
            if new:
                backend.curve([(p["step"], {**{f"train/{k}": v for k, v in p.items() if k not in ("step", "epoch")},
                                            **{f"heldout/{k}": v for k, v in held.get(p["step"], {}).items()
                                               if k != "step"}})
                               for p in new])
                self.logged[tracker] = new[-1]["step"]
        self._save_state()
        spent = time.perf_counter() - start
        self.seconds += spent
        return spent

    def finish(self, metrics: dict) -> None:
        values = final_values(metrics)
        for backend in self.backends.values():
            backend.final(values, int(metrics.get("train_steps", 0)))

    def close(self, ok: bool) -> None:
        for backend in self.backends.values():
            backend.close(ok)

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close(ok=kind is None)
