"""Statistics over seeds and examples: confidence intervals, paired tests, bootstrap, Holm correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, lower, upper) of a Student-t confidence interval for the mean."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (np.nan,) * 4
    mean = float(x.mean())
    if x.size < 2:
        return mean, np.nan, np.nan, np.nan
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * sd / np.sqrt(x.size))
    return mean, sd, mean - half, mean + half


def describe(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per group: n, mean, std and 95% t-interval of each metric, as columns <metric>_{mean,std,ci95_low,ci95_high}."""
    rows = []
    for key, group in df.groupby(by, sort=True):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["n"] = len(group)
        for m in metrics:
            if m not in group or not pd.api.types.is_numeric_dtype(group[m]) or group[m].isna().all():
                continue
            mean, sd, lo, hi = t_interval(group[m])
            row.update({f"{m}_mean": mean, f"{m}_std": sd, f"{m}_ci95_low": lo, f"{m}_ci95_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_t(a, b) -> float:
    """Two-sided paired t-test p-value (NaN with fewer than two pairs or zero variance of differences)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or np.allclose(a - b, (a - b)[0]):
        return np.nan
    return float(stats.ttest_rel(a, b).pvalue)


def mcnemar_exact(correct_a, correct_b) -> tuple[float, int, int]:
    """Exact McNemar test on paired correctness: binomial test of the discordant pairs. Returns (p, b, c)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0, only_a, only_b
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue), only_a, only_b


def bootstrap_diff_ci(per_seed_a: list[dict], per_seed_b: list[dict], statistic, n_boot: int = 2000,
                      seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Percentile bootstrap CI of statistic(A) - statistic(B), averaged over seeds.

    Each element of per_seed_* holds per-example arrays of one seed, aligned between A and B (the same
    examples). Examples are resampled with the same indices for A and B (a paired bootstrap).
    """
    rng = np.random.default_rng(seed)
    point = np.mean([statistic(a) - statistic(b) for a, b in zip(per_seed_a, per_seed_b)])
    draws = np.zeros(n_boot)
    for a, b in zip(per_seed_a, per_seed_b):
        n = len(next(iter(a.values())))
        idx = rng.integers(0, n, size=(n_boot, n))
        draws += np.array([statistic({k: v[i] for k, v in a.items()}) - statistic({k: v[i] for k, v in b.items()})
                           for i in idx])
    draws /= len(per_seed_a)
    alpha = (1 - confidence) / 2
    return float(point), float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


ALPHA, POWER = 0.05, 0.80


def _t_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test over ``n`` pairs against a true mean difference of ``effect``
    standard deviations of the differences (the noncentral t distribution)."""
    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)
    shift = effect * np.sqrt(n)
    # The far tail underflows to NaN in scipy's noncentral t for large shifts: it is zero there.
    return float(np.nan_to_num(stats.nct.sf(crit, df, shift)) + np.nan_to_num(stats.nct.cdf(-crit, df, shift)))


def paired_t_mde(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest mean difference the paired t-test over ``n`` pairs detects with ``power`` at ``alpha``,
    given the differences' standard deviation: NaN with fewer than two pairs or no spread."""
    if n < 2 or not np.isfinite(sd_diff) or sd_diff <= 0:
        return np.nan
    from scipy.optimize import brentq

    return float(sd_diff * brentq(lambda e: _t_power(e, n, alpha) - power, 1e-9, 100.0))


def seeds_to_resolve(sd_diff: float, diff: float, alpha: float = ALPHA, power: float = POWER,
                     most: int = 10_000) -> float:
    """About how many seeds (pairs) the paired t-test needs to detect a difference of ``diff`` with
    ``power``, if the differences keep their observed spread; NaN where that cannot be said."""
    if not np.isfinite(sd_diff) or sd_diff <= 0 or not np.isfinite(diff) or diff == 0:
        return np.nan
    effect = abs(diff) / sd_diff
    if _t_power(effect, most, alpha) < power:
        return np.nan
    low, high = 1, most  # power grows with n: bisect for the first n that reaches it
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _t_power(effect, mid, alpha) >= power else (mid, high)
    return float(high)


def mcnemar_examples_needed(discordant_rate: float, diff: float, alpha: float = ALPHA,
                            power: float = POWER) -> float:
    """Paired examples McNemar's test needs to detect an accuracy difference ``diff`` when a share
    ``discordant_rate`` of examples is right under one method only (Connor 1987, normal approximation)."""
    d, p = abs(diff), discordant_rate
    if not np.isfinite(d) or d == 0 or not np.isfinite(p) or p <= d:
        return np.nan
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return float(np.ceil((za * np.sqrt(p) + zb * np.sqrt(p - d * d)) ** 2 / (d * d)))


def mcnemar_mde(discordant_rate: float, n_examples: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest accuracy difference McNemar's test over ``n_examples`` paired examples detects with
    ``power``, at the observed rate of discordant examples (the inverse of mcnemar_examples_needed)."""
    p = discordant_rate
    if not np.isfinite(p) or p <= 0 or n_examples < 1:
        return np.nan
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    from scipy.optimize import brentq

    need = lambda d: (za * np.sqrt(p) + zb * np.sqrt(p - d * d)) ** 2 / (d * d) - n_examples  # noqa: E731
    return float(brentq(need, 1e-9, p)) if need(p) < 0 else np.nan


def tost_interval(diffs, confidence: float = 0.90) -> tuple[float, float]:
    """The 90% t-interval of the mean paired difference: inside +-margin means equivalent by two one-sided
    tests at 0.05 each (TOST). NaN with fewer than two pairs."""
    d = np.asarray(diffs, float)
    if d.size < 2:
        return np.nan, np.nan
    mean, _, lo, hi = t_interval(d, confidence)
    if not np.isfinite(lo):  # no spread at all: the interval is the mean itself
        return mean, mean
    return lo, hi


def verdict(p_adjusted: float, interval: tuple[float, float], margin: float) -> str:
    """differs (adjusted p < 0.05), equivalent (the 90% interval of the difference within +-margin), or
    unresolved: neither, so a difference smaller than the test's MDE may be there or not."""
    if np.isfinite(p_adjusted) and p_adjusted < ALPHA:
        return "differs"
    lo, hi = interval
    if np.isfinite(lo) and np.isfinite(hi) and -margin < lo and hi < margin:
        return "equivalent"
    return "unresolved"


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count as comparisons)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    order = ok[np.argsort(p[ok])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def pareto_front(points: pd.DataFrame, cost: str, value: str, higher_is_better: bool) -> pd.Series:
    """True for points no other point beats on both lower cost and better value."""
    sign = 1 if higher_is_better else -1
    front = []
    for _, p in points.iterrows():
        dominated = ((points[cost] <= p[cost]) & (sign * points[value] >= sign * p[value])
                     & ((points[cost] < p[cost]) | (sign * points[value] > sign * p[value]))).any()
        front.append(not dominated)
    return pd.Series(front, index=points.index)
