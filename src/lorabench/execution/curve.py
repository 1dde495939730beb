"""The held-out curve: a run's held-out metric at evenly spaced optimizer steps, for time to quality.

Points sit at steps round(k * T / n), k = 1..n, of a run of T optimizer steps (the last step included). Each
records the step, the training time and the training FLOPs so far, the metric on the dataset's
``holdout_size`` slice of its train split (never the eval split) and its standard error (``se``: binomial for
accuracy, the delta method over windows for perplexity), and from the second point on ``gain_se``, the
standard error of its change from the point before, paired over the same held-out examples (what the
Convergence section's "still improving" reads: two points on the same examples differ far less by chance
than their own errors suggest). The trainer excludes each evaluation's time
from the training time and reports it apart (``curve_eval_time_s``). An evaluation changes nothing a later
step reads: it runs under no_grad in eval mode (dropout off, SparseLoRA dense) with its own mask generator, and
the global RNG state is put back afterwards, so a run with a curve trains exactly as one without, and a resumed
run's curve equals an uninterrupted one's. Sizes and cost per dataset: docs/measurements/heldout-curve.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from lorabench.execution.evaluate import evaluate
from lorabench.runtime.precision import FP32, Precision


def curve_steps(points: int, total_steps: int, key: str = "evaluation.curve_points") -> list[int]:
    """The optimizer steps of ``points`` evenly spaced curve points over ``total_steps`` (the last included).
    More points than steps is refused, naming ``key``."""
    if points > total_steps:
        raise ValueError(f"config key '{key}': {points} curve points, but the run takes only {total_steps} "
                         f"optimizer steps; set it to at most {total_steps}")
    return [math.floor(k * total_steps / points + 0.5) for k in range(1, points + 1)] if points else []


@dataclass
class HeldoutCurve:
    """What evaluating one curve point needs: the held-out rows and how the run's evaluation reads them."""

    rows: list[dict]
    collator: object
    task: str
    lm_kind: str | None
    batch_size: int
    mask_seed: int
    points: int
    key: str = "evaluation.curve_points"  # the config key that set ``points``, for errors
    precision: Precision = FP32

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "perplexity"

    def steps(self, total_steps: int) -> list[int]:
        return curve_steps(self.points, total_steps, self.key)

    def point(self, model, device: torch.device) -> tuple[float, float, float, list[float]]:
        """(held-out metric, its standard error, seconds, per-example outputs) of ``model`` as it stands: the
        outputs are 1/0 (correct or not) for accuracy, each window's mean NLL for perplexity, in example order.
        Leaves the model in training mode and the RNG as it was."""
        start = time.perf_counter()
        rng = torch.get_rng_state()
        scores, per_example = evaluate(model, self.rows, self.collator, self.task, self.lm_kind, self.batch_size,
                                       self.mask_seed, device, self.precision)
        torch.set_rng_state(rng)
        model.train()
        value = float(scores[self.metric])
        n = len(per_example)
        if self.task == "classification":
            outputs = (per_example["label"] == per_example["pred"]).astype(float).to_numpy()
            se = math.sqrt(value * (1 - value) / n)
        else:  # perplexity = exp(mean NLL): its SE is perplexity x the SE of the mean NLL over windows
            outputs = (per_example["nll_sum"] / per_example["tokens"]).to_numpy()
            se = value * float(np.std(outputs, ddof=1)) / math.sqrt(n) if n > 1 else math.nan
        return value, se, time.perf_counter() - start, outputs.tolist()

    def gain_se(self, before: list[float], now: list[float], value: float) -> float:
        """The standard error of the metric's change between two points, paired over the examples: accuracy,
        sd of the per-example differences / sqrt(n); perplexity, the same of the windows' mean NLL, times the
        perplexity (delta method)."""
        d = np.asarray(now) - np.asarray(before)
        if len(d) < 2:
            return math.nan
        se = float(np.std(d, ddof=1)) / math.sqrt(len(d))
        return se if self.task == "classification" else value * se
