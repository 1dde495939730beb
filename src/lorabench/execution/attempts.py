"""Every attempt at one training run: a job killed and resumed, or retried on another node.

A resumed run's ``train_time_s`` counts each optimizer step once (the steps a killed attempt ran after its last
checkpoint are redone, and counted then), but the device time a cluster bills covers every attempt, the lost
steps included. So each attempt records its device, precision, optimizer, steps and device seconds in
``attempts.json`` beside the checkpoint, rewritten whenever the trainer reads its loss log (every
``LossLog.READ_EVERY`` steps, and at every checkpoint): a SIGKILLed attempt's record ends at most that many
steps before the kill. ``device_hours`` and ``cost_usd`` are the sum over the attempts; the held-out curve's
evaluation is measurement, not billed training, and is left out of each attempt's seconds.

A record from other settings (the checkpoint's fingerprint differs) belongs to another experiment and is
dropped, as the checkpoint is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from lorabench.io import read_json, write_json

FILE = "attempts.json"


class Attempts:
    """The attempts at one run so far and the current one, kept in ``<directory>/attempts.json`` (none kept
    without a directory: a direct call that cannot be resumed has one attempt)."""

    def __init__(self, directory, fingerprint: dict, device: str, device_type: str, precision: str):
        self.path = Path(directory) / FILE if directory is not None else None
        self.fingerprint = fingerprint
        kept = read_json(self.path) if self.path is not None and self.path.exists() else {}
        self.previous: list[dict] = kept.get("attempts", []) if kept.get("fingerprint") == fingerprint else []
        self.current = {"device": device, "device_type": device_type, "precision": precision, "optimizer": "",
                        "from_step": 0, "to_step": 0, "device_s": 0.0}
        self._start = time.perf_counter()
        self._curve_s = 0.0
        self._optimizer: Callable[[], str] = str

    def begin(self, step: int, curve_eval_s: float, optimizer_ran: Callable[[], str]) -> None:
        """The attempt starts training at optimizer ``step`` (its checkpoint's), with ``curve_eval_s`` seconds of
        held-out evaluation already behind the run; ``optimizer_ran()`` says what its optimizer runs as
        (``Method.optimizer_ran``: known for sure once its state exists, so it is asked at every beat)."""
        self._start, self._curve_s, self._optimizer = time.perf_counter(), curve_eval_s, optimizer_ran
        self.current.update(from_step=step, to_step=step)
        self.beat(step, curve_eval_s)

    def beat(self, step: int, curve_eval_s: float) -> None:
        """Record that the attempt has reached ``step`` alive, with the run's held-out evaluation at
        ``curve_eval_s`` seconds (not billed)."""
        self.current["to_step"] = step
        self.current["optimizer"] = self._optimizer()
        self.current["device_s"] = time.perf_counter() - self._start - (curve_eval_s - self._curve_s)
        if self.path is not None:
            write_json(self.path, {"fingerprint": self.fingerprint, "attempts": self.all()})

    def all(self) -> list[dict]:
        return [*self.previous, dict(self.current)]

    def summary(self) -> dict:
        """The run's columns from its attempts: how many, their device seconds in all, and the devices,
        precisions and optimizers that ran (each once, in order, joined by ' + ' where they differ)."""
        attempts = self.all()

        def ran(key: str) -> str:
            return " + ".join(dict.fromkeys(a[key] for a in attempts if a[key]))

        return {"attempts": len(attempts), "device_s": sum(a["device_s"] for a in attempts),
                "device": ran("device"), "precision": ran("precision"), "optimizer": ran("optimizer")}


FAILURE_FILE = "failure.json"
#: Failures that repeat when the same run is tried again on the same device model: a retry with the same
#: resources (Snakemake's ``retries``) would only spend device hours to fail the same way.
DETERMINISTIC_FAILURES = ("DivergenceError", "OutOfMemoryError")


class RepeatedFailure(RuntimeError):
    """The run failed deterministically before, with these settings on this device model."""


def refuse_known_failure(directory, key: dict) -> None:
    """Raise ``RepeatedFailure`` if an earlier attempt at this run, with the same ``key`` (settings and device
    model), failed in a way that repeats; a changed setting or another device model tries again."""
    path = Path(directory) / FAILURE_FILE if directory is not None else None
    if path is None or not path.exists():
        return
    failed = read_json(path)
    if failed.get("key") != key:
        path.unlink()
        return
    raise RepeatedFailure(f"an earlier attempt at this run failed with {failed['kind']} on {key['device']} with the "
                          f"same settings: {failed['message']}. Not retried with the same resources; change the "
                          f"setting the message names, or delete {path} to try again as it is")


def record_failure(directory, key: dict, err: BaseException) -> None:
    """Keep a deterministic failure beside the checkpoint, for ``refuse_known_failure``."""
    if directory is not None and type(err).__name__ in DETERMINISTIC_FAILURES:
        write_json(Path(directory) / FAILURE_FILE, {"key": key, "kind": type(err).__name__,
                                                    "message": str(err).strip().splitlines()[0][:500]})
