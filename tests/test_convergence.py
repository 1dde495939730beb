"""The end-of-training trend that flags an unconverged run, on curves whose answer is known."""

import math

import numpy as np

from lorabench.analysis.convergence import LEVELLED, NO_PROGRESS, STILL_FALLING, TOO_FEW, smoothed, tail_trend


def test_a_loss_still_falling_linearly_is_flagged():
    losses = list(np.linspace(2.0, 1.0, 100))
    t = tail_trend(losses)
    assert t["convergence"] == STILL_FALLING
    # the last 10 steps fall by 9 * (1/99) against a mean of about 1.045
    assert math.isclose(t["loss_tail_drop_rel"], 9 / 99 / np.mean(losses[-10:]), rel_tol=1e-6)


def test_a_loss_that_has_levelled_off_is_not_flagged_even_when_noisy():
    rng = np.random.default_rng(0)
    steps = np.arange(200)
    losses = 0.3 + 1.5 * np.exp(-steps / 15) + rng.normal(0, 0.05, steps.size)
    assert tail_trend(losses)["convergence"] == LEVELLED


def test_a_flat_curve_that_never_left_its_start_is_no_progress_not_convergence():
    rng = np.random.default_rng(1)
    verdicts = [tail_trend(0.69 + rng.normal(0, 0.05, 60))["convergence"] for _ in range(50)]
    assert verdicts.count(STILL_FALLING) <= 5  # one-sided p < 0.05 and a 5% fall: rare by chance
    assert verdicts.count(NO_PROGRESS) >= 40


def test_short_runs_are_too_few_steps_to_judge():
    t = tail_trend([2.0, 1.5, 1.2])
    assert t["convergence"] == TOO_FEW and math.isnan(t["loss_tail_drop_rel"])


def test_running_mean_smooths_without_lag_at_the_start():
    assert smoothed([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    assert smoothed([4.0] * 40) == [4.0] * 40
