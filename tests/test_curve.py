"""The held-out curve and time to target: points at the configured steps, evaluation never counted as training,
a curve that changes nothing the run trains, and time to target read off it."""

import math

import numpy as np
import pytest
from scipy import stats

from lorabench.analysis.convergence import heldout_trend
from lorabench.analysis.time_to_quality import median_interval, quality_table, time_to_target
from lorabench.execution.curve import curve_steps
from lorabench.execution.jobs import train_run

from conftest import MINILM
from conftest import SST2_DATASET as DATASET

TRAINING = {"epochs": 1, "batch_size": 8, "grad_accum_steps": 1, "warmup_ratio": 0.1, "weight_decay": 0.0,
            "max_grad_norm": 1.0, "subset_seed": 0, "checkpoint_every": 0}


def _run(tokenized, out, points, dataset=DATASET, method="lora"):
    return train_run(model_dir=str(MINILM), tokenized_dir=str(tokenized), out_model_dir=str(out / "model"),
                     out_metrics=str(out / "train_metrics.json"), out_eval_metrics=str(out / "eval_metrics.json"),
                     out_predictions=str(out / "predictions.csv"), dataset_name="sst2", dataset=dataset,
                     model_cfg={"repo": "sentence-transformers/all-MiniLM-L6-v2"}, method_name=method,
                     method_params={"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.1}, training=TRAINING,
                     evaluation={"batch_size": 16, "mask_seed": 0, "curve_points": points}, seed=0, threads=1,
                     device="cpu", cost_per_device_hour={"cpu": 0.05})


def test_curve_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert curve_steps(4, 10) == [3, 5, 8, 10]
    assert curve_steps(3, 3) == [1, 2, 3]
    assert curve_steps(1, 375) == [375] and curve_steps(0, 10) == []
    with pytest.raises(ValueError, match="config key 'evaluation.curve_points': 11 curve points.*at most 10"):
        curve_steps(11, 10)


def test_points_sit_at_the_steps_and_their_evaluation_is_not_training_time(tokenized, tmp_path):
    # 12 steps of 8 sentences, and a point after every one on 48 held-out sentences: the curve evaluates more
    # examples (576) than training sees (96), so training time that counted them would exceed their own time.
    m = _run(tokenized, tmp_path / "curve", 12)
    curve = m["heldout_curve"]
    assert m["train_steps"] == 12 and [p["step"] for p in curve] == list(range(1, 13))
    assert m["heldout_metric"] == "accuracy" and m["heldout_examples"] == 48
    for p in curve:
        assert 0 <= p["accuracy"] <= 1 and p["se"] == pytest.approx(math.sqrt(p["accuracy"] * (1 - p["accuracy"]) / 48))
    assert "gain_se" not in curve[0] and all(p["gain_se"] >= 0 for p in curve[1:])  # paired over the 48 sentences
    times, flops = [p["train_time_s"] for p in curve], [p["train_flops"] for p in curve]
    assert all(b > a for a, b in zip(times, times[1:])) and all(b > a for a, b in zip(flops, flops[1:]))
    assert times[-1] == m["train_time_s"] and flops[-1] == m["train_flops"]
    assert m["curve_eval_time_s"] > 0 and m["train_time_s"] < m["curve_eval_time_s"]
    assert m["job_phases_s"]["curve"] == pytest.approx(m["curve_eval_time_s"])


def test_a_curve_changes_nothing_the_run_trains(tokenized, tmp_path):
    """Dropout is on (0.1): an evaluation that moved the RNG would change every later step."""
    with_curve, without = _run(tokenized, tmp_path / "a", 4), _run(tokenized, tmp_path / "b", 0)
    assert [p["step"] for p in with_curve["heldout_curve"]] == [3, 6, 9, 12] and without["heldout_curve"] == []
    assert with_curve["loss_curve"] == without["loss_curve"]
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()


def test_no_held_out_slice_no_curve(tokenized, tmp_path):
    m = _run(tokenized, tmp_path / "none", 4, {**DATASET, "holdout_size": None})
    assert m["heldout_curve"] == [] and m["curve_eval_time_s"] == 0


CURVE = [{"step": 10, "train_time_s": 5.0, "train_flops": 1e9, "accuracy": 0.70, "se": 0.03},
         {"step": 20, "train_time_s": 10.0, "train_flops": 2e9, "accuracy": 0.83, "se": 0.02},
         {"step": 30, "train_time_s": 15.0, "train_flops": 3e9, "accuracy": 0.81, "se": 0.02}]


def test_time_to_target_is_the_first_point_at_or_past_it():
    hit = time_to_target(CURVE, "accuracy", 0.8, usd_per_second=0.01)
    assert hit == {"reached_target": True, "steps_to_target": 20, "time_to_target_s": 10.0, "flops_to_target": 2e9,
                   "cost_to_target_usd": pytest.approx(0.1)}
    assert time_to_target(CURVE, "accuracy", 0.70)["steps_to_target"] == 10  # at the target counts
    miss = time_to_target(CURVE, "accuracy", 0.9)
    assert miss["reached_target"] is False
    assert all(math.isnan(miss[k]) for k in ("steps_to_target", "time_to_target_s", "flops_to_target",
                                             "cost_to_target_usd"))
    ppl = [{"step": 5, "train_time_s": 2.0, "train_flops": 1.0, "perplexity": 70.0},
           {"step": 10, "train_time_s": 4.0, "train_flops": 2.0, "perplexity": 55.0}]
    assert time_to_target(ppl, "perplexity", 60)["steps_to_target"] == 10  # lower is better
    assert time_to_target(ppl, "perplexity", 50)["reached_target"] is False


def test_median_interval_from_order_statistics():
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, pytest.approx(0.75))
    x = np.arange(20.0)
    low, high, coverage = median_interval(x)
    k = int(low)  # ranks k+1 .. 20-k
    assert coverage == pytest.approx(1 - 2 * stats.binom.cdf(k, 20, 0.5)) and coverage >= 0.95
    assert 1 - 2 * stats.binom.cdf(k + 1, 20, 0.5) < 0.95 and high == 19 - k  # the narrowest that covers 95%
    assert median_interval([1.0, np.inf, np.inf])[1] == np.inf


def test_methods_rank_by_median_time_and_misses_count():
    import pandas as pd

    rows = []
    for method, times in (("fast", [5.0, 6.0, None]), ("slow", [9.0, 10.0, 11.0]), ("never", [None, None, 4.0])):
        for seed, t in enumerate(times):
            rows.append({"dataset": "sst2", "method": method, "seed": seed, "reached_target": t is not None,
                         "time_to_target_s": t if t is not None else np.nan, "steps_to_target": 1.0,
                         "flops_to_target": 1.0, "cost_to_target_usd": 1.0, "target_value": 0.8,
                         "heldout_metric": "accuracy", "curve_spacing_steps": 10})
    table = quality_table(pd.DataFrame(rows))
    assert list(table["method"]) == ["fast", "slow", "never"]
    assert list(table["reached"]) == ["2 of 3", "3 of 3", "1 of 3"]
    assert table.loc[0, "median_time_to_target_s"] == 6.0 and table.loc[2, "median_time_to_target_s"] == np.inf
    from lorabench.analysis.report import _time_to_quality_section

    section = "\n".join(_time_to_quality_section(pd.DataFrame(rows)))
    assert "### sst2: held-out accuracy >= 0.8" in section
    assert "| 1 | fast | 2 of 3 | 6.0 | 5.0 to not reached (75%) |" in section  # min to max of 3 seeds
    assert "| - | never | 1 of 3 | not reached |" in section  # most runs missed: no median, no rank
    assert "Runs that never reached it: fast (1 of 3), never (2 of 3)." in section


def test_still_improving_needs_a_gain_beyond_what_two_points_can_detect():
    trend = heldout_trend(CURVE[:2], "accuracy", True)
    assert trend["heldout_last_gain"] == pytest.approx(0.13)
    assert trend["heldout_gain_mde"] == pytest.approx(2.8 * math.hypot(0.03, 0.02))
    assert trend["heldout_still_improving"] is True  # 0.13 > 0.10
    assert heldout_trend(CURVE, "accuracy", True)["heldout_still_improving"] is False  # it fell
    ppl = [{"perplexity": 60.0, "se": 1.0}, {"perplexity": 58.0, "se": 1.0}]
    assert heldout_trend(ppl, "perplexity", False)["heldout_still_improving"] is False  # 2 < 2.8 * 1.41
    # the same windows at both points: their paired error is far smaller than their own
    ppl[1]["gain_se"] = 0.5
    paired = heldout_trend(ppl, "perplexity", False)
    assert paired["heldout_gain_mde"] == pytest.approx(1.4) and paired["heldout_still_improving"] is True


def test_gain_se_is_paired_over_the_examples():
    from lorabench.execution.curve import HeldoutCurve

    acc = HeldoutCurve([], None, "classification", None, 8, 0, 2)
    before, now = [1, 0, 0, 1, 0, 1, 0, 0], [1, 1, 0, 1, 1, 1, 0, 0]  # two examples turned right
    d = np.array(now) - np.array(before)
    assert acc.gain_se(before, now, 0.5) == pytest.approx(d.std(ddof=1) / math.sqrt(8))
    ppl = HeldoutCurve([], None, "language_modeling", "causal", 8, 0, 2)
    nll_before, nll_now = [4.0, 4.2, 3.9, 4.1], [3.8, 4.0, 3.8, 3.9]
    d = np.array(nll_now) - np.array(nll_before)
    assert ppl.gain_se(nll_before, nll_now, 50.0) == pytest.approx(50.0 * d.std(ddof=1) / 2)
