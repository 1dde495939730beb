"""Figures with plotnine, PNG and SVG, faceted per dataset; one colour per method type everywhere, and one
point shape per variant (config key) where a type has several."""

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
    "sparselora": "#e377c2",
}

FIGURES = ["metric_vs_trainable_params", "throughput_vs_metric", "train_time", "memory", "pareto_memory_metric"]


def task_metric(df: pd.DataFrame) -> pd.DataFrame:
    """Add 'metric' (accuracy in % for classification, perplexity for language modelling) and 'panel'."""
    df = df.copy()
    is_cls = df["task"] == "classification"
    df["metric"] = float("nan")
    if "accuracy" in df:
        df.loc[is_cls, "metric"] = 100.0 * df.loc[is_cls, "accuracy"]
    if "perplexity" in df:
        df.loc[~is_cls, "metric"] = df.loc[~is_cls, "perplexity"]
    df["panel"] = df["dataset"] + df["task"].map({"classification": ": accuracy (%)",
                                                   "language_modeling": ": perplexity (lower is better)"})
    return df


def seed_summary(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds of each column, per (panel, method), as <c>, <c>_lo, <c>_hi.

    With a single seed there is no interval; the bars then collapse onto the mean."""
    from lorabench.stats import describe

    s = describe(df, ["panel", "dataset", "task", "method", "method_type"], columns)
    for c in columns:
        mean = s.get(f"{c}_mean", pd.Series(float("nan"), index=s.index))
        s[c] = mean
        s[f"{c}_lo"] = s.get(f"{c}_ci95_low", mean).fillna(mean)
        s[f"{c}_hi"] = s.get(f"{c}_ci95_high", mean).fillna(mean)
    return s


def _theme(width=12, height=4):
    return [p9.scale_colour_manual(values=METHOD_COLOURS, name="method type"),
            p9.scale_fill_manual(values=METHOD_COLOURS, name="method type"),
            p9.theme_bw(), p9.theme(figure_size=(width, height))]


def _save(plot, out_prefix) -> None:
    plot.save(f"{out_prefix}.png", dpi=110, verbose=False)
    plot.save(f"{out_prefix}.svg", verbose=False)


def pareto_front(points: pd.DataFrame, cost: str, value: str, higher_is_better: bool) -> pd.Series:
    """True for points no other point beats on both lower cost and better value."""
    sign = 1 if higher_is_better else -1
    front = []
    for _, p in points.iterrows():
        dominated = ((points[cost] <= p[cost]) & (sign * points[value] >= sign * p[value])
                     & ((points[cost] < p[cost]) | (sign * points[value] > sign * p[value]))).any()
        front.append(not dominated)
    return pd.Series(front, index=points.index)


def draw_all(summary_csv, out_dir) -> None:
    df = task_metric(pd.read_csv(summary_csv))
    if "method_type" not in df:  # summaries from before typed variants: the key was the type
        df["method_type"] = df["method"]
    cols = ["metric", "trainable_params", "train_time_s", "peak_train_mem_mb", "peak_infer_mem_mb", "throughput_per_s"]
    s = seed_summary(df, [c for c in cols if c in df])
    # Tall enough for both legends (one entry per method type, one per variant).
    height = max(4.0, 1.2 + 0.24 * (s["method"].nunique() + s["method_type"].nunique()))
    errorbar = p9.geom_errorbar(p9.aes(ymin="metric_lo", ymax="metric_hi"), width=0.04)
    by_type = {"colour": "method_type", "shape": "method"}
    _save(p9.ggplot(s, p9.aes("trainable_params", "metric", **by_type)) + errorbar + p9.geom_point(size=3)
          + p9.scale_x_log10() + p9.facet_wrap("~panel", scales="free")
          + p9.labs(x="trainable parameters (count, log scale)", y="task metric (mean over seeds, 95% CI)",
                    title="Task metric vs trainable parameters") + _theme(12, height),
          f"{out_dir}/metric_vs_trainable_params")
    if "throughput_per_s" in s:
        _save(p9.ggplot(s, p9.aes("throughput_per_s", "metric", **by_type)) + errorbar + p9.geom_point(size=3)
              + p9.facet_wrap("~panel", scales="free")
              + p9.labs(x="inference throughput (examples/s, unmerged adapter)", y="task metric (mean, 95% CI)",
                        title="Inference throughput vs task metric") + _theme(12, height),
              f"{out_dir}/throughput_vs_metric")
    _save(p9.ggplot(s, p9.aes("method", "train_time_s", fill="method_type")) + p9.geom_col()
          + p9.geom_errorbar(p9.aes(ymin="train_time_s_lo", ymax="train_time_s_hi"), width=0.3)
          + p9.facet_wrap("~dataset", scales="free_y") + p9.coord_flip()
          + p9.labs(x="", y="training time (s, mean over seeds, 95% CI)", title="Training time per method")
          + _theme(), f"{out_dir}/train_time")
    mem = []
    for kind, col in (("training", "peak_train_mem_mb"), ("inference", "peak_infer_mem_mb")):
        if col in s:
            part = s[["dataset", "method", "method_type", col, f"{col}_lo", f"{col}_hi"]].copy()
            part.columns = ["dataset", "method", "method_type", "mb", "lo", "hi"]
            part["kind"] = kind
            mem.append(part)
    mem = pd.concat(mem)
    _save(p9.ggplot(mem, p9.aes("method", "mb", fill="method_type")) + p9.geom_col()
          + p9.geom_errorbar(p9.aes(ymin="lo", ymax="hi"), width=0.3)
          + p9.facet_grid("kind~dataset", scales="free_y") + p9.coord_flip()
          + p9.labs(x="", y="peak memory (MB above the process baseline; GPU: max allocated)",
                    title="Peak training and inference memory per method") + _theme(12, 6), f"{out_dir}/memory")
    fronts = []
    for _, g in s.groupby("panel"):
        g = g.copy()
        g["frontier"] = pareto_front(g, "peak_train_mem_mb", "metric", g["task"].iloc[0] == "classification")
        fronts.append(g)
    fr = pd.concat(fronts)
    line = fr[fr["frontier"]].sort_values("peak_train_mem_mb")
    _save(p9.ggplot(fr, p9.aes("peak_train_mem_mb", "metric")) + p9.geom_line(data=line, colour="grey")
          + p9.geom_point(p9.aes(colour="method_type", shape="frontier"), size=3)
          + p9.geom_errorbar(p9.aes(ymin="metric_lo", ymax="metric_hi", colour="method_type"), width=0.04)
          + p9.scale_shape_manual(values={True: "D", False: "o"}, name="on the Pareto frontier")
          + p9.facet_wrap("~panel", scales="free")
          + p9.labs(x="peak training memory (MB)", y="task metric (mean, 95% CI)",
                    title="Memory vs task metric: the Pareto frontier (diamonds, grey line)") + _theme(),
          f"{out_dir}/pareto_memory_metric")
