"""Has a run trained out? The trend of its training loss over the last part of training, so that a comparison
between a converged method and one still improving says so instead of calling the second one worse."""

from __future__ import annotations

import math
from typing import Sequence

TAIL_FRACTION = 0.1
"""The part of training whose trend is judged: the last 10% of optimizer steps."""
MIN_TAIL_STEPS = 5
"""Fewer steps than this in the tail (a run of under 50 steps takes 5) give no trend worth reading; runs shorter
than twice this are 'too few steps'."""
STEEP_DROP = 0.05
"""A tail whose fitted loss falls by at least this fraction of its mean loss is 'still falling'..."""
MAX_P = 0.05
"""...when the fitted slope is negative at this one-sided significance (per-batch losses are noisy)."""

STILL_FALLING = "still falling"
NO_PROGRESS = "no progress"
LEVELLED = "levelled off"
TOO_SHORT = "too short to judge"
TOO_FEW = "too few steps"


def tail_trend(losses: Sequence[float]) -> dict:
    """``loss_tail_drop_rel`` (the least-squares fit's fall over the tail, as a fraction of the tail's mean loss;
    negative when the loss rises), ``loss_tail_drop_rel_upper`` (the upper end of its one-sided 95% interval:
    the steepest fall the tail does not rule out), ``loss_tail_p`` (one-sided p of a falling slope) and
    ``convergence``: one of 'still falling', 'no progress' (the tail's mean loss is within STEEP_DROP of the
    first tenth's: a flat curve that never left its start, such as a classifier stuck at chance), 'levelled
    off' (positive evidence: the interval rules out a fall of STEEP_DROP), 'too short to judge' (it does not:
    too few or too noisy steps to tell a levelled loss from a falling one), 'too few steps'."""
    from scipy import stats

    losses = [float(x) for x in losses if math.isfinite(float(x))]
    n = len(losses)
    if n < 2 * MIN_TAIL_STEPS:
        return {"loss_tail_drop_rel": float("nan"), "loss_tail_drop_rel_upper": float("nan"),
                "loss_tail_p": float("nan"), "convergence": TOO_FEW}
    k = max(MIN_TAIL_STEPS, math.ceil(TAIL_FRACTION * n))
    tail = losses[-k:]
    fit = stats.linregress(range(k), tail, alternative="less")
    mean = sum(tail) / k
    drop = -fit.slope * (k - 1) / mean if mean > 0 else float("nan")
    steepest = fit.slope - stats.t.ppf(1 - MAX_P, k - 2) * fit.stderr  # one-sided 95% bound of the slope
    upper = -steepest * (k - 1) / mean if mean > 0 else float("nan")
    head = sum(losses[:k]) / k
    if drop >= STEEP_DROP and fit.pvalue < MAX_P:
        verdict = STILL_FALLING
    elif head - mean < STEEP_DROP * head:
        verdict = NO_PROGRESS
    elif upper < STEEP_DROP:
        verdict = LEVELLED
    else:
        verdict = TOO_SHORT
    return {"loss_tail_drop_rel": drop, "loss_tail_drop_rel_upper": upper, "loss_tail_p": float(fit.pvalue),
            "convergence": verdict}


#: A held-out gain is real when it exceeds this many standard errors of the difference of two points: the
#: minimum detectable effect at 80% power and two-sided alpha 0.05 (z 1.96 + 0.84).
MDE_Z = 2.8


def heldout_trend(curve: Sequence[dict], metric: str, higher_is_better: bool) -> dict:
    """Was the held-out metric still improving at the end? ``heldout_last_gain``: the improvement from the
    second-to-last curve point to the last (positive = better); ``heldout_gain_mde``: the smallest gain the two
    points could detect, MDE_Z x the SE of their difference: paired over the same examples (the last point's
    ``gain_se``), else the points' SEs taken as independent, which overstates it; ``heldout_still_improving``:
    the gain exceeds it."""
    if len(curve) < 2:
        return {"heldout_last_gain": float("nan"), "heldout_gain_mde": float("nan"),
                "heldout_still_improving": float("nan")}
    prev, last = curve[-2], curve[-1]
    gain = (last[metric] - prev[metric]) * (1 if higher_is_better else -1)
    se = last.get("gain_se", math.hypot(prev.get("se", float("nan")), last.get("se", float("nan"))))
    mde = MDE_Z * se
    return {"heldout_last_gain": gain, "heldout_gain_mde": mde,
            "heldout_still_improving": bool(gain > mde) if math.isfinite(mde) else float("nan")}


def smoothed(losses: Sequence[float], window: int | None = None) -> list[float]:
    """Trailing running mean over ``window`` steps (default: a twentieth of the run), for figures: per-batch
    losses swing more than the trend they carry."""
    window = window or max(1, len(losses) // 20)
    out, total = [], 0.0
    for i, x in enumerate(losses):
        total += x
        if i >= window:
            total -= losses[i - window]
        out.append(total / min(i + 1, window))
    return out
