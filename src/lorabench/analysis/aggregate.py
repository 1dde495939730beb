"""results/summary.csv: one row per (dataset, model, method, seed), one column per metric, units in names."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from lorabench.analysis.convergence import heldout_trend, tail_trend
from lorabench.analysis.time_to_quality import HIGHER_IS_BETTER, time_to_target
from lorabench.io import read_json

ID_COLUMNS = ["dataset", "model_repo", "method", "method_type", "seed", "task", "train_split", "eval_split"]
# Lists and nested records stay in the per-run JSON files; the summary keeps scalars. job_phases_s is where
# each job's time went (benchmarks/pipeline_efficiency.py), not a property of the method.
DROP = {"loss_curve", "heldout_curve", "epoch_times_s", "versions", "job_phases_s", "train_flops_per_token",
        "train_tokens_by_phase", "adalora_layer_ranks"}


def run_row(train_metrics: dict, eval_metrics: dict, target: float | None = None) -> dict:
    """One run's summary row; with ``target`` (its dataset's, on the held-out metric) its time to target."""
    row = {k: v for k, v in train_metrics.items() if k not in DROP}
    row.update(eval_metrics)
    row.update(tail_trend([point["loss"] for point in train_metrics.get("loss_curve", [])]))
    held, metric = train_metrics.get("heldout_curve"), train_metrics.get("heldout_metric")
    if held:  # the held-out metric at the last step (the model as trained), beside the eval split's
        row[f"heldout_{metric}"] = held[-1][metric]
        steps = [0] + [p["step"] for p in held]
        row["curve_spacing_steps"] = max(b - a for a, b in zip(steps, steps[1:]))  # what bounds steps_to_target
        row.update(heldout_trend(held, metric, HIGHER_IS_BETTER[metric]))
    if target is not None and held:
        seconds = row.get("device_hours", 0.0) * 3600
        row["target_value"] = target
        row.update(time_to_target(held, metric, target, row["cost_usd"] / seconds if seconds else float("nan")))
    versions = train_metrics.get("versions", {})
    row["torch_version"] = versions.get("torch")
    row["peft_version"] = versions.get("peft")
    row["trainable_pct"] = 100.0 * row["trainable_params"] / row["total_params"]
    return row


def efficiency_table(efficiency_of: Mapping) -> pd.DataFrame:
    """Latency, throughput, size, inference memory and FLOPs per (dataset, method), measured once per pair,
    not per seed. ``efficiency_of``: "<dataset>/<method>" -> its results/efficiency JSON file; variants that
    deploy the same model (an lr_grid's rates, LoRA's pruned variants) share one file."""
    rows = []
    for pair, f in efficiency_of.items():
        dataset, method = pair.split("/")
        measured = {k: v for k, v in read_json(f).items() if k not in DROP}
        # The variant whose job measured it: another one where both deploy the same model (common.smk).
        rows.append({"dataset": dataset, "method": method, "efficiency_measured_on": Path(f).stem, **measured})
    return pd.DataFrame(rows)


def summarize(train_files, eval_files, efficiency_of: Mapping | None = None,
              targets: Mapping | None = None) -> pd.DataFrame:
    """``targets``: dataset -> the target value of its held-out metric (datasets.<name>.target.value)."""
    rows = []
    targets = targets or {}
    for tf, ef in zip(sorted(map(str, train_files)), sorted(map(str, eval_files))):
        if Path(tf).parent != Path(ef).parent:
            raise ValueError(f"train and eval files do not pair up: {tf} vs {ef}")
        train = read_json(tf)
        rows.append(run_row(train, read_json(ef), targets.get(train["dataset"])))
    df = pd.DataFrame(rows)
    if efficiency_of:
        # A key both jobs write (memory_note: how each measured its memory) keeps both, named by the job.
        df = df.merge(efficiency_table(efficiency_of), on=["dataset", "method"], how="left",
                      validate="many_to_one", suffixes=("_train", "_efficiency"))
        # fvcore's estimate of the whole run's training FLOPs (per-example forward+backward times examples seen),
        # next to train_flops, which the training job counted from what it computed (torch's FLOP counter).
        df["train_flops_estimate"] = df["train_flops_per_example"] * df["train_examples_seen"]
    first = [c for c in ID_COLUMNS if c in df.columns]
    df = df[first + sorted(c for c in df.columns if c not in first)]
    return df.sort_values(["dataset", "method", "seed"]).reset_index(drop=True)


def write_summary(train_files, eval_files, efficiency_of: Mapping, out_csv,
                  targets: Mapping | None = None) -> pd.DataFrame:
    df = summarize(train_files, eval_files, efficiency_of, targets)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    return df
