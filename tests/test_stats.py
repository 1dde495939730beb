import numpy as np
import pytest
from scipy import stats as sps

from lorabench.analysis import stats


def test_t_interval_matches_scipy():
    x = [0.81, 0.84, 0.79, 0.86, 0.83]
    mean, sd, lo, hi = stats.t_interval(x)
    ref = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert mean == pytest.approx(np.mean(x)) and sd == pytest.approx(np.std(x, ddof=1))
    assert (lo, hi) == pytest.approx(ref)
    assert np.isnan(stats.t_interval([1.0])[2])


def test_paired_t_matches_scipy_and_handles_degenerate_cases():
    a, b = [0.8, 0.82, 0.85], [0.78, 0.81, 0.80]
    assert stats.paired_t(a, b) == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert np.isnan(stats.paired_t([0.8], [0.7]))
    assert np.isnan(stats.paired_t([0.8, 0.9], [0.7, 0.8]))  # constant difference: no variance


def test_mcnemar_exact_hand_computed():
    # discordant pairs: A right/B wrong = 1, A wrong/B right = 5 -> two-sided binomial p = 2 * 7/64
    a = [1, 0, 0, 0, 0, 0, 1, 1]
    b = [0, 1, 1, 1, 1, 1, 1, 1]
    p, only_a, only_b = stats.mcnemar_exact(a, b)
    assert (only_a, only_b) == (1, 5)
    assert p == pytest.approx(2 * 7 / 64)
    assert stats.mcnemar_exact([1, 1], [1, 1])[0] == 1.0


def test_holm_hand_computed():
    adj = stats.holm([0.01, 0.04, 0.03, np.nan])
    # sorted 0.01, 0.03, 0.04 -> 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    assert adj[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adj[3])


def test_bootstrap_ci_covers_the_true_difference():
    rng = np.random.default_rng(1)
    n = 400
    truth = rng.random(n) < 0.5
    a = [{"correct": (rng.random(n) < 0.80).astype(float)} for _ in range(3)]
    b = [{"correct": (rng.random(n) < 0.70).astype(float)} for _ in range(3)]
    point, lo, hi = stats.bootstrap_diff_ci(a, b, lambda d: d["correct"].mean(), n_boot=500)
    assert lo < point < hi and lo < 0.10 < hi and lo > 0
    assert truth.size == n
