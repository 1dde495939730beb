"""The tables the report is written from: per-method summaries over seeds, every method against the baseline
(paired t over seeds, exact McNemar and a paired bootstrap on per-example predictions, Holm-adjusted), and how
many seeds of each method had not converged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.analysis import stats
from lorabench.analysis.convergence import NO_PROGRESS, STILL_FALLING, TOO_FEW, TOO_SHORT
from lorabench.analysis.metrics import primary_metric

SUMMARY_METRICS = [
    "accuracy", "macro_f1", "perplexity", "trainable_params", "adapter_params", "head_params", "total_params",
    "train_time_s", "train_time_per_epoch_s", "train_tokens_per_s", "train_examples_per_s", "peak_train_mem_mb",
    "peak_infer_mem_mb", "peak_infer_batch1_mem_mb", "load_peak_mem_mb", "param_bytes", "grad_bytes", "optimizer_state_bytes", "latency_ms",
    "latency_p95_ms", "latency_merged_ms", "throughput_per_s",
    "throughput_merged_per_s", "adapter_size_mb", "model_size_mb", "flops_per_example", "train_flops",
    "device_hours", "cost_usd", "adapter_sparsity", "effective_rank",
]


# Where and how a run was measured: the device models of its training and efficiency jobs, and what their memory
# columns measure (runtime/memory.py: rss or cuda_allocated). Rows that differ in these are not like for like.
CONTEXT_COLUMNS = {"device": ("device", "efficiency_device"),
                   "memory kind": ("memory_kind_train", "memory_kind_efficiency")}


def distinct_values(column: pd.Series) -> set[str]:
    """The distinct values of a column, joined values (' + ': a resumed run, a by-method row) split."""
    return {v for cell in column.dropna().astype(str) for v in cell.split(" + ")}


def unlike(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, str]:
    """What a comparison of rows ``a`` with rows ``b`` would hide: {"device": "X against Y"} where they ran on
    other device models, {"memory kind": "rss against cuda_allocated"} where their memory columns measure
    different quantities. Empty when they compare like for like. Every comparison of memory refuses a
    "memory kind" difference; every other comparison says where the devices differ."""
    out = {}
    for what, columns in CONTEXT_COLUMNS.items():
        cols = [c for c in columns if c in a and c in b]
        va = set().union(*(distinct_values(a[c]) for c in cols)) if cols else set()
        vb = set().union(*(distinct_values(b[c]) for c in cols)) if cols else set()
        if va != vb:
            out[what] = f"{' + '.join(sorted(va))} against {' + '.join(sorted(vb))}"
    return out


def summary_by_method(summary: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in SUMMARY_METRICS if c in summary]
    # The precision a method ran in is part of what it is measured as; grouping by it keeps runs of two
    # precisions apart rather than averaging them.
    keys = ["dataset", "task", "method"] + [k for k in ("method_type", "precision") if k in summary]
    out = stats.describe(summary, keys, cols)
    for col in [c for columns in CONTEXT_COLUMNS.values() for c in columns if c in summary]:
        joined = summary.groupby(keys, sort=True)[col].agg(lambda v: " + ".join(sorted(distinct_values(v))))
        out = out.merge(joined.reset_index(), on=keys, how="left")
    # Latency and throughput are timed once per (dataset, method), in rounds: their interval is over those
    # rounds (carried in the summary), not over seeds, which all share the one measurement.
    for c in cols:
        low, high = f"{c}_ci95_low", f"{c}_ci95_high"
        if low in summary and high in summary:
            rounds = summary.groupby(keys, sort=True)[[low, high]].first().reset_index()
            out = out.drop(columns=[low, high, f"{c}_std"], errors="ignore").merge(rounds, on=keys, how="left")
    return out


def _per_example(run_dir: Path, task: str) -> dict:
    df = pd.read_csv(run_dir / "predictions.csv").sort_values("example_id")
    if task == "classification":
        return {"correct": (df["label"] == df["pred"]).to_numpy(float)}
    return {"nll_sum": df["nll_sum"].to_numpy(float), "tokens": df["tokens"].to_numpy(float)}


def _statistic(task: str):
    if task == "classification":
        return lambda d: d["correct"].mean()
    return lambda d: float(np.exp(d["nll_sum"].sum() / d["tokens"].sum()))


def significance(summary: pd.DataFrame, runs_dir, baseline: str, margins: dict | None = None,
                 n_boot: int = 2000) -> pd.DataFrame:
    """Every method against the baseline, per dataset: paired t over seeds, exact McNemar on the pooled
    per-example predictions (classification), a paired bootstrap CI of the metric difference; Holm over
    all comparisons of each test. Each comparison gets its resolution (``resolution``): the MDE, and a
    verdict against ``margins`` (metric -> equivalence margin)."""
    runs_dir = Path(runs_dir)
    rows = []
    for dataset, g in summary.groupby("dataset"):
        task = g["task"].iloc[0]
        metric, _ = primary_metric(task)
        base = g[g["method"] == baseline].set_index("seed")
        if base.empty:
            continue
        for method in sorted(set(g["method"]) - {baseline}):
            m = g[g["method"] == method].set_index("seed")
            seeds = sorted(set(m.index) & set(base.index))
            ex_m = [_per_example(runs_dir / dataset / method / f"seed{s}", task) for s in seeds]
            ex_b = [_per_example(runs_dir / dataset / baseline / f"seed{s}", task) for s in seeds]
            diff, lo, hi = stats.bootstrap_diff_ci(ex_m, ex_b, _statistic(task), n_boot=n_boot)
            row = {
                "dataset": dataset, "method": method, "baseline": baseline, "metric": metric, "n_seeds": len(seeds),
                "seed_diffs": (m.loc[seeds, metric] - base.loc[seeds, metric]).to_numpy(float),
                "method_mean": float(m.loc[seeds, metric].mean()), "baseline_mean": float(base.loc[seeds, metric].mean()),
                "diff": diff, "diff_boot_ci95_low": lo, "diff_boot_ci95_high": hi,
                "p_paired_t": stats.paired_t(m.loc[seeds, metric], base.loc[seeds, metric]),
                "p_mcnemar_exact": np.nan, "mcnemar_only_method_right": np.nan, "mcnemar_only_baseline_right": np.nan,
            }
            if task == "classification":
                p, only_m, only_b = stats.mcnemar_exact(np.concatenate([e["correct"] for e in ex_m]),
                                                        np.concatenate([e["correct"] for e in ex_b]))
                row.update(p_mcnemar_exact=p, mcnemar_only_method_right=only_m, mcnemar_only_baseline_right=only_b,
                           examples_pooled=sum(len(e["correct"]) for e in ex_m))
            rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_paired_t_holm"] = stats.holm(out["p_paired_t"])
        out["p_mcnemar_exact_holm"] = stats.holm(out["p_mcnemar_exact"])
        out = pd.concat([out, out.apply(lambda r: pd.Series(resolution(r, margins or {})), axis=1)], axis=1)
        out = out.drop(columns="seed_diffs")
    return out


def resolution(row, margins: dict) -> dict:
    """What one comparison could resolve. Over seeds (the verdict's test): ``verdict`` (differs, equivalent
    or unresolved; stats.verdict), the 90% interval of the mean difference that decides equivalence, ``mde``
    (the smallest difference the paired t-test detects at 80% power and alpha 0.05 with the observed spread)
    and ``seeds_to_resolve`` (about how many seeds would detect a difference of the observed size). Over
    examples (classification): McNemar's ``mde_mcnemar`` at the pooled examples and the observed rate of
    examples only one method gets right, and ``examples_to_resolve`` for the observed difference."""
    diffs = row["seed_diffs"]
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else np.nan
    margin = margins.get(row["metric"], np.nan)
    lo, hi = stats.tost_interval(diffs)
    out = {"diff_seed_ci90_low": lo, "diff_seed_ci90_high": hi, "equivalence_margin": margin,
           "mde": stats.paired_t_mde(sd, len(diffs)),
           "seeds_to_resolve": stats.seeds_to_resolve(sd, float(np.mean(diffs)) if len(diffs) else np.nan),
           "verdict": stats.verdict(row["p_paired_t_holm"], (lo, hi), margin),
           "mde_mcnemar": np.nan, "examples_to_resolve": np.nan}
    pooled = row.get("examples_pooled", np.nan)
    if np.isfinite(pooled) and pooled > 0:
        only_m, only_b = row["mcnemar_only_method_right"], row["mcnemar_only_baseline_right"]
        rate = (only_m + only_b) / pooled
        out["mde_mcnemar"] = stats.mcnemar_mde(rate, int(pooled))
        out["examples_to_resolve"] = stats.mcnemar_examples_needed(rate, (only_m - only_b) / pooled)
    return out


def convergence_table(summary: pd.DataFrame, untrained_types=()) -> pd.DataFrame:
    """Per (dataset, method): how many seeds' training loss was still falling steeply at the end
    (lorabench.analysis.convergence), the mean fall over the last tenth of steps, and the final loss."""
    if "convergence" not in summary:
        return pd.DataFrame()
    if "method_type" in summary:  # the untrained base has no training loss
        summary = summary[~summary["method_type"].isin(list(untrained_types))]
    g = summary.groupby(["dataset", "method"], sort=True)
    out = pd.DataFrame({
        "seeds": g["seed"].nunique(),
        "still_falling": g["convergence"].apply(lambda c: int((c == STILL_FALLING).sum())),
        "no_progress": g["convergence"].apply(lambda c: int((c == NO_PROGRESS).sum())),
        "too_short_to_judge": g["convergence"].apply(lambda c: int((c == TOO_SHORT).sum())),
        "too_few_steps": g["convergence"].apply(lambda c: int((c == TOO_FEW).sum())),
        "loss_tail_drop_pct": 100.0 * g["loss_tail_drop_rel"].mean(),
        "final_train_loss": g["final_train_loss"].mean(),
        "train_steps": g["train_steps"].max(),
    })
    if "heldout_still_improving" in summary:  # the held-out curve's last two points (convergence.heldout_trend)
        out["heldout_still_improving"] = g["heldout_still_improving"].apply(
            lambda c: int((c == True).sum()))  # noqa: E712  (True, False or NaN where a run has no curve)
    return out.reset_index()
