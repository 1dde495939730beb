"""The smoke config through real Snakemake: every dataset and method, metrics in range, and reruns that
touch only what a config change invalidates."""

import math
import re

import pandas as pd
import pytest

from conftest import smoke_config, snakemake, write_config

pytestmark = pytest.mark.e2e


def test_summary_has_every_dataset_and_method_with_valid_metrics(smoke_run):
    cfg = smoke_config()
    df = pd.read_csv(smoke_run / "results" / "summary.csv")
    assert len(df) == len(cfg["datasets"]) * len(cfg["methods"]) * len(cfg["seeds"])
    assert set(df["dataset"]) == set(cfg["datasets"]) and set(df["method"]) == set(cfg["methods"])
    cls = df[df["task"] == "classification"]
    assert cls["accuracy"].between(0, 1).all() and cls["macro_f1"].between(0, 1).all()
    lm = df[df["task"] == "language_modeling"]
    assert (lm["perplexity"] > 1).all() and lm["perplexity"].map(math.isfinite).all()
    assert (lm["train_split"] == "validation").all()  # the snapshot lacks WikiText-2 train; recorded
    for col in ("train_time_s", "train_time_per_epoch_s", "peak_train_mem_mb", "trainable_params", "total_params"):
        assert (df[col] > 0).all(), col
    assert (df["trainable_params"] <= df["total_params"]).all()
    full = df[df["method"] == "full_ft"].set_index("dataset")["trainable_params"]
    lora = df[df["method"] == "lora"].set_index("dataset")["trainable_params"]
    assert (lora < full / 10).all()
    # units are in the column names
    assert {"train_time_s", "peak_train_mem_mb", "cost_usd", "device_hours"} <= set(df.columns)


def test_run_outputs_and_figures_exist(smoke_run):
    run = smoke_run / "results" / "runs" / "sst2" / "lora" / "seed0"
    assert (run / "model" / "adapter_model.safetensors").stat().st_size > 0
    preds = pd.read_csv(run / "predictions.csv")
    assert {"example_id", "label", "pred"} <= set(preds.columns) and len(preds) == 32
    for ext in ("png", "svg"):
        assert (smoke_run / "results" / "figures" / f"metric_vs_trainable_params.{ext}").stat().st_size > 1000
    for rule in ("train", "evaluate"):
        assert list((smoke_run / "results" / "logs" / rule).glob("*.log"))
        assert list((smoke_run / "results" / "benchmarks" / rule).glob("*.tsv"))


def _planned_jobs(proc) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run would execute."""
    jobs, rule = [], None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line.strip())
        if m:
            rule = m.group(1)
            jobs.append((rule, ""))
        m = re.match(r"^wildcards: (.*)", line.strip())
        if m and jobs:
            jobs[-1] = (rule, m.group(1))
    return jobs


def test_nothing_reruns_and_one_hyperparameter_reruns_only_its_method(smoke_run, tmp_path):
    cfg = smoke_config()
    same = snakemake(smoke_run, write_config(tmp_path / "same.yaml", cfg), "--dry-run", timeout=120)
    assert same.returncode == 0, same.stderr
    assert "Nothing to be done" in same.stdout + same.stderr

    cfg["methods"]["hira"]["lr"] = cfg["methods"]["hira"]["lr"] * 2
    changed = snakemake(smoke_run, write_config(tmp_path / "changed.yaml", cfg), "--dry-run", timeout=120)
    assert changed.returncode == 0, changed.stderr
    jobs = _planned_jobs(changed)
    trained = [w for r, w in jobs if r == "train"]
    assert trained and all("method=hira" in w for w in trained)
    assert len(trained) == len(cfg["datasets"]) * len(cfg["seeds"])
    assert not any(r in ("fetch_model", "fetch_dataset", "tokenize") for r, _ in jobs)
    assert {r for r, _ in jobs} <= {"train", "evaluate", "aggregate", "plot", "all"}
