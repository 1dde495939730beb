"""Figures with plotnine. One colour per method everywhere (METHOD_COLOURS)."""

from __future__ import annotations

import pandas as pd
import plotnine as p9

METHOD_COLOURS = {
    "full_ft": "#000000",
    "lora": "#1f77b4",
    "sparse_lora_l1": "#ff7f0e",
    "sparse_lora_magnitude": "#d62728",
    "sparse_lora_structured": "#9467bd",
    "qlora": "#2ca02c",
    "hira": "#8c564b",
}


def task_metric(df: pd.DataFrame) -> pd.DataFrame:
    """One 'metric' column per row: accuracy (%) for classification, perplexity for language modelling."""
    df = df.copy()
    is_cls = df["task"] == "classification"
    df["metric"] = 0.0
    if "accuracy" in df:
        df.loc[is_cls, "metric"] = 100.0 * df.loc[is_cls, "accuracy"]
    if "perplexity" in df:
        df.loc[~is_cls, "metric"] = df.loc[~is_cls, "perplexity"]
    df["panel"] = df["dataset"] + df["task"].map({"classification": ": accuracy (%)", "language_modeling": ": perplexity"})
    return df


def colour_scale():
    return p9.scale_colour_manual(values=METHOD_COLOURS, name="method")


def metric_vs_trainable_params(summary_csv, png, svg) -> None:
    df = task_metric(pd.read_csv(summary_csv))
    agg = (df.groupby(["panel", "method"], as_index=False)
             .agg(metric=("metric", "mean"), lo=("metric", "min"), hi=("metric", "max"),
                  trainable_params=("trainable_params", "mean")))
    plot = (
        p9.ggplot(agg, p9.aes("trainable_params", "metric", colour="method"))
        + p9.geom_errorbar(p9.aes(ymin="lo", ymax="hi"), width=0.05)
        + p9.geom_point(size=3)
        + p9.scale_x_log10()
        + p9.facet_wrap("~panel", scales="free_y")
        + colour_scale()
        + p9.labs(x="trainable parameters (log scale)", y="task metric (mean over seeds; bars: min-max)",
                  title="Task metric vs trainable parameters")
        + p9.theme_bw()
        + p9.theme(figure_size=(11, 4))
    )
    plot.save(png, dpi=120, verbose=False)
    plot.save(svg, verbose=False)
