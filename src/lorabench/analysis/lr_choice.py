"""Learning rates chosen by a sweep, not by hand.

A config's ``lr_grid`` maps a ``methods`` entry to the learning rates to try. Each rate becomes a variant of
that entry (``lora`` at 3e-4 is ``lora_lr3e-4``), trained like any other; every dataset of such a config holds
out a slice of its train split (``holdout_size``) and scores the variants there, never on the eval split.
``choice_table`` then picks, per dataset and entry, the rate with the best mean over seeds.
"""

from __future__ import annotations

import pandas as pd

from lorabench.analysis import stats
from lorabench.analysis.metrics import primary_metric
from lorabench.config.lr_grid import grid_variants


def choice_table(summary: pd.DataFrame, lr_grid: dict[str, list[float]]) -> pd.DataFrame:
    """One row per (dataset, swept entry, rate): the held-out metric's mean and 95% interval over seeds, its
    final training loss, and ``chosen`` on the best rate of each (dataset, entry)."""
    variants = grid_variants(lr_grid)
    rows = []
    for (dataset, method), g in summary.groupby(["dataset", "method"]):
        if method not in variants:
            continue
        entry, lr = variants[method]
        task = g["task"].iloc[0]
        metric, _ = primary_metric(task)
        mean, _, low, high = stats.t_interval(g[metric])
        rows.append({"dataset": dataset, "task": task, "method": entry, "lr": lr, "metric": metric, "mean": mean,
                     "ci95_low": low, "ci95_high": high, "seeds": g["seed"].nunique(),
                     "final_train_loss": g["final_train_loss"].mean(), "eval_split": g["eval_split"].iloc[0]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    best = []
    for _, g in table.groupby(["dataset", "method"]):
        higher = primary_metric(g["task"].iloc[0])[1]
        best.append(g["mean"].idxmax() if higher else g["mean"].idxmin())
    table["chosen"] = table.index.isin(best)
    return table.sort_values(["dataset", "method", "lr"]).reset_index(drop=True)
