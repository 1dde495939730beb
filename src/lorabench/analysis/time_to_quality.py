"""Time to quality: when each run's held-out curve first reached its dataset's target, and how methods rank.

As MLPerf's training benchmarks score: the training time (and steps, FLOPs, dollars) to a target quality, with
the runs that never reach it counted, not dropped. Accuracy reaches a target at or above it, perplexity at or
below. The curve is evaluated at a few steps only (execution/curve.py), so a run's time to target is the time
of the first curve point past it: an upper bound, late by at most the spacing of its points. The report says
so with the spacing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

#: The metric a curve scores, and whether higher is better.
HIGHER_IS_BETTER = {"accuracy": True, "perplexity": False}

TARGET_COLUMNS = ["reached_target", "steps_to_target", "time_to_target_s", "flops_to_target", "cost_to_target_usd"]


def reached(value: float, target: float, metric: str) -> bool:
    return value >= target if HIGHER_IS_BETTER[metric] else value <= target


def time_to_target(curve: list[dict], metric: str, target: float, usd_per_second: float = math.nan) -> dict:
    """The first point of ``curve`` at or past ``target``: reached_target, then its step, training time, FLOPs
    and cost (time x the run's price per second); the four are NaN where the curve never reaches it."""
    for point in curve:
        if reached(point[metric], target, metric):
            return {"reached_target": True, "steps_to_target": point["step"],
                    "time_to_target_s": point["train_time_s"], "flops_to_target": point["train_flops"],
                    "cost_to_target_usd": point["train_time_s"] * usd_per_second}
    return {"reached_target": False, **dict.fromkeys(TARGET_COLUMNS[1:], math.nan)}


def median_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(low, high, coverage): the distribution-free interval for a median from order statistics, the
    narrowest pair symmetric in rank whose binomial coverage is at least ``level``; with too few values for
    that (3 seeds cover 75% with their minimum and maximum) the widest one, min to max, and its coverage."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    best = (x[0], x[-1], 1 - 2 * stats.binom.cdf(0, n, 0.5))
    for k in range(1, n // 2 + 1):  # ranks k+1 .. n-k (1-based) cover 1 - 2 P(Bin(n, 1/2) <= k)
        coverage = 1 - 2 * stats.binom.cdf(k, n, 0.5)
        if coverage < level:
            break
        best = (x[k], x[n - 1 - k], coverage)
    return best


def quality_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method) with a target: how many runs reached it, and the median time, steps, FLOPs and
    cost to it over all seeds, the runs that never reached it counted as infinitely late (so a method whose
    runs mostly miss has no finite median); ranked by median time to target within each dataset."""
    if "reached_target" not in summary or summary["reached_target"].isna().all():
        return pd.DataFrame()
    rows = []
    for (dataset, method), g in summary.dropna(subset=["reached_target"]).groupby(["dataset", "method"]):
        hit = g["reached_target"].astype(bool)
        times = np.where(hit, g["time_to_target_s"], np.inf)
        low, high, coverage = median_interval(times)
        rows.append({
            "dataset": dataset, "method": method, "target": g["target_value"].iloc[0],
            "metric": g["heldout_metric"].iloc[0], "reached": f"{int(hit.sum())} of {len(g)}",
            "reached_runs": int(hit.sum()), "runs": len(g),
            "median_time_to_target_s": float(np.median(times)),
            "time_interval_low_s": low, "time_interval_high_s": high, "interval_coverage": coverage,
            "median_steps_to_target": float(np.median(np.where(hit, g["steps_to_target"], np.inf))),
            "median_flops_to_target": float(np.median(np.where(hit, g["flops_to_target"], np.inf))),
            "median_cost_to_target_usd": float(np.median(np.where(hit, g["cost_to_target_usd"], np.inf))),
            "curve_spacing_steps": g["curve_spacing_steps"].max(),
        })
    table = pd.DataFrame(rows)
    return table.sort_values(["dataset", "median_time_to_target_s", "reached_runs"],
                             ascending=[True, True, False]).reset_index(drop=True)
