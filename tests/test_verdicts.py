"""significance.csv's verdicts and their resolution, and the report's words, on runs built by hand: per-seed
accuracies and per-example predictions whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from lorabench.analysis import stats
from lorabench.analysis.comparisons import significance
from lorabench.analysis.report import write_report
from lorabench.methods import type_traits

N = 400  # eval examples per seed
ACCURACY = {  # per seed: lora is the baseline
    "lora": [0.800, 0.810, 0.790, 0.805],
    "better": [0.860, 0.872, 0.849, 0.866],  # +6 points in every seed: differs
    "same": [0.8025, 0.8075, 0.7925, 0.8050],  # within 0.3 points in every seed: equivalent within 1 point
    "noisy": [0.830, 0.780, 0.820, 0.785],  # +-3 points around lora: neither
}


def _runs(tmp_path):
    rows = []
    labels = np.random.default_rng(0).integers(0, 2, N)
    for method, accs in ACCURACY.items():
        for seed, acc in enumerate(accs):
            right = np.zeros(N, bool)
            right[np.random.default_rng(seed).permutation(N)[:round(acc * N)]] = True  # nested across methods
            run = tmp_path / "runs" / "sst2" / method / f"seed{seed}"
            run.mkdir(parents=True)
            pd.DataFrame({"example_id": range(N), "label": labels, "pred": np.where(right, labels, 1 - labels)}
                         ).to_csv(run / "predictions.csv", index=False)
            rows.append({"dataset": "sst2", "task": "classification", "method": method, "method_type": "lora",
                         "seed": seed, "accuracy": round(acc * N) / N, "peak_train_mem_mb": 100.0,
                         "train_time_s": 10.0, "device": "cpu", "train_steps": 50, "model_repo": "m"})
    return pd.DataFrame(rows)


def test_each_comparison_gets_its_verdict_and_resolution(tmp_path):
    summary = _runs(tmp_path)
    sig = significance(summary, tmp_path / "runs", "lora", {"accuracy": 0.01}, n_boot=200).set_index("method")
    assert sig.loc["better", "verdict"] == "differs"
    assert sig.loc["same", "verdict"] == "equivalent"
    assert sig.loc["noisy", "verdict"] == "unresolved"
    for method in ("better", "same", "noisy"):
        diffs = summary[summary.method == method]["accuracy"].to_numpy() - summary[summary.method == "lora"][
            "accuracy"].to_numpy()
        assert sig.loc[method, "mde"] == pytest.approx(stats.paired_t_mde(np.std(diffs, ddof=1), 4))
    noisy = sig.loc["noisy"]
    assert noisy["mde"] > abs(noisy["diff"])  # what an unresolved comparison means
    assert noisy["seeds_to_resolve"] > 4
    # McNemar on nested predictions: every discordant example is one the noisy method alone gets right or wrong
    rate = (noisy["mcnemar_only_method_right"] + noisy["mcnemar_only_baseline_right"]) / (4 * N)
    assert noisy["examples_to_resolve"] == stats.mcnemar_examples_needed(rate, noisy["diff"])
    assert noisy["mde_mcnemar"] == pytest.approx(stats.mcnemar_mde(rate, 4 * N))


def test_the_report_uses_the_three_words_and_never_says_no_difference(tmp_path):
    summary = _runs(tmp_path)
    summary.to_csv(tmp_path / "summary.csv", index=False)
    write_report(tmp_path / "summary.csv", tmp_path / "runs", "lora", tmp_path / "by_method.csv",
                 tmp_path / "significance.csv", tmp_path / "report.md", type_traits(["lora"]),
                 margins={"accuracy": 0.01})
    text = (tmp_path / "report.md").read_text()
    assert "1 differs, 1 equivalent, 1 unresolved of 3 comparisons" in text
    line = next(s for s in text.splitlines() if s.startswith("- noisy on sst2"))
    assert "MDE" in line and "seeds (paired t)" in line and "eval examples pooled over seeds (McNemar" in line
    assert "equivalent within +-1.00 accuracy points" in text
    assert "no difference shown" not in text.lower()
    assert set(pd.read_csv(tmp_path / "significance.csv")["verdict"]) == {"differs", "equivalent", "unresolved"}
