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


def test_mde_matches_statsmodels_power_solver():
    from statsmodels.stats.power import TTestPower

    for n, sd in ((2, 0.02), (3, 0.01), (5, 0.03), (10, 1.5)):
        assert stats.paired_t_mde(sd, n) == pytest.approx(
            sd * TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8), rel=1e-5)
    assert np.isnan(stats.paired_t_mde(0.01, 1)) and np.isnan(stats.paired_t_mde(0.0, 3))
    # seeds for an effect of half a standard deviation: statsmodels says 33.4 pairs, so 34
    assert stats.seeds_to_resolve(0.02, 0.01) == 34


def test_mcnemar_sample_size_and_mde_hand_computed():
    # Connor (1987): n = (z_.975 sqrt(p) + z_.8 sqrt(p - d^2))^2 / d^2, p = 0.2 discordant, d = 0.02
    n = (1.959964 * 0.2 ** 0.5 + 0.841621 * (0.2 - 0.0004) ** 0.5) ** 2 / 0.0004
    assert stats.mcnemar_examples_needed(0.2, 0.02) == np.ceil(n) == 3923
    assert stats.mcnemar_mde(0.2, 3923) == pytest.approx(0.02, rel=1e-3)
    assert np.isnan(stats.mcnemar_examples_needed(0.01, 0.02))  # impossible: fewer discordant than the gap


def test_the_three_verdicts_on_constructed_seed_differences():
    differs = [0.050, 0.052, 0.049, 0.051]
    equivalent = [0.001, -0.002, 0.0015, 0.0]
    unresolved = [0.03, -0.02, 0.01, -0.015]
    for diffs, expected in ((differs, "differs"), (equivalent, "equivalent"), (unresolved, "unresolved")):
        p = sps.ttest_1samp(diffs, 0.0).pvalue
        assert stats.verdict(p, stats.tost_interval(diffs), 0.01) == expected, (diffs, p)
    # TOST by hand: the 90% interval is mean +- t_.95,3 * sd / sqrt(4)
    half = sps.t.ppf(0.95, 3) * np.std(equivalent, ddof=1) / 2
    assert stats.tost_interval(equivalent) == pytest.approx((np.mean(equivalent) - half, np.mean(equivalent) + half))
    assert stats.verdict(0.2, stats.tost_interval(equivalent), float("nan")) == "unresolved"  # no margin given
