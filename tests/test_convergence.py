"""The end-of-training trend that flags an unconverged run, on curves whose answer is known."""

import math

import numpy as np

from lorabench.analysis.convergence import (LEVELLED, NO_PROGRESS, STILL_FALLING, TOO_FEW, TOO_SHORT, smoothed,
                                           tail_trend)


def test_a_loss_still_falling_linearly_is_flagged():
    losses = list(np.linspace(2.0, 1.0, 100))
    t = tail_trend(losses)
    assert t["convergence"] == STILL_FALLING
    # the last 10 steps fall by 9 * (1/99) against a mean of about 1.045
    assert math.isclose(t["loss_tail_drop_rel"], 9 / 99 / np.mean(losses[-10:]), rel_tol=1e-6)


def test_levelled_off_needs_an_interval_that_rules_out_a_steep_fall():
    rng = np.random.default_rng(0)
    steps = np.arange(200)
    quiet = 0.3 + 1.5 * np.exp(-steps / 15) + rng.normal(0, 0.005, steps.size)
    t = tail_trend(quiet)
    assert t["convergence"] == LEVELLED and t["loss_tail_drop_rel_upper"] < 0.05
    # the same curve with batches alternating +-0.05 around it (a sixth of the loss): its fitted tail is flat,
    # but 20 such steps cannot rule out a 5% fall
    noisy = 0.3 + 1.5 * np.exp(-steps / 15) + 0.05 * (-1.0) ** steps
    t = tail_trend(noisy)
    assert t["convergence"] == TOO_SHORT and t["loss_tail_drop_rel_upper"] >= 0.05
    # the bound by hand: the fitted slope minus t(0.95, 18) standard errors, over 19 steps, per mean loss
    from scipy import stats as sps

    fit = sps.linregress(range(20), noisy[-20:])
    bound = -(fit.slope - sps.t.ppf(0.95, 18) * fit.stderr) * 19 / np.mean(noisy[-20:])
    assert math.isclose(t["loss_tail_drop_rel_upper"], bound, rel_tol=1e-9)


def test_ten_steps_falling_by_nine_percent_is_not_called_levelled():
    # The default run's WikiText-2 case: 10 steps, the loss still falling about 9% over the last 5 of them,
    # with per-batch noise: the tail test alone has no power there, and the verdict must not be 'levelled off'.
    rng = np.random.default_rng(3)
    losses = 4.0 - 0.08 * np.arange(10) + rng.normal(0, 0.15, 10)
    assert tail_trend(losses)["convergence"] in (TOO_SHORT, STILL_FALLING)


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
