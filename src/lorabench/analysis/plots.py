"""Figures with plotnine, PNG and SVG, faceted per dataset; one colour per method type everywhere, and one
point shape per variant (config key) where a type has several."""

from __future__ import annotations

import re
from typing import Iterable

import pandas as pd
import plotnine as p9

from lorabench.analysis.metrics import variant_columns
from lorabench.analysis.stats import pareto_front

#: Point shapes plotnine can tell apart: variants get one each up to this many.
MAX_SHAPES = 13

def colour_scales(colours: dict, name: str) -> list:
    """One colour per method type (each type's ``colour``), the same in every figure."""
    if not colours:
        return []
    return [p9.scale_colour_manual(values=colours, name=name), p9.scale_fill_manual(values=colours, name=name)]


def loss_curve_table(train_metric_files) -> pd.DataFrame:
    """One row per (dataset, method, seed, optimizer step): the training loss, raw and smoothed
    (lorabench.analysis.convergence.smoothed), from the training jobs' metrics."""
    from lorabench.analysis.convergence import smoothed
    from lorabench.io import read_json

    rows = []
    for f in train_metric_files:
        m = read_json(f)
        curve = m.get("loss_curve", [])
        for point, smooth in zip(curve, smoothed([p["loss"] for p in curve])):
            rows.append({"dataset": m["dataset"], "method": m["method"], "method_type": m.get("method_type", m["method"]),
                         "seed": m["seed"], "step": point["step"], "loss": point["loss"], "smoothed": smooth})
    return pd.DataFrame(rows, columns=["dataset", "method", "method_type", "seed", "step", "loss", "smoothed"])


def draw_loss_curves(train_metric_files, out_prefix, colours: dict) -> None:
    """Training loss against optimizer step, one panel per dataset and one line per method: the mean over seeds
    of each seed's running mean, with a band from the lowest to the highest seed."""
    t = loss_curve_table(train_metric_files)
    if t.empty:
        t = pd.DataFrame({"dataset": ["none"], "method": ["no run"], "method_type": ["lora"], "seed": [0],
                          "step": [0], "loss": [0.0], "smoothed": [0.0]})
    band = t.groupby(["dataset", "method", "method_type", "step"], as_index=False)["smoothed"].agg(
        ["mean", "min", "max"])
    methods = band["method"].nunique()
    # Colour per variant where it can be told apart from the others; by type (the other figures' colours) where
    # every variant is its own type.
    colour = "method_type" if methods == band["method_type"].nunique() else "method"
    scale = colour_scales(colours, "method") if colour == "method_type" else []
    _save(p9.ggplot(band, p9.aes("step", "mean", colour=colour, fill=colour, group="method"))
          + p9.geom_ribbon(p9.aes(ymin="min", ymax="max"), alpha=0.15, colour="none")
          + p9.geom_line() + p9.facet_wrap("~dataset", scales="free")
          + p9.labs(x="optimizer step", y="training loss (running mean)",
                    title="Training loss per method: has it levelled off? (line: mean over seeds; band: their range)")
          + scale + p9.theme_bw() + p9.theme(figure_size=(12, max(4.0, 1.2 + 0.24 * methods))), out_prefix)


def heldout_curve_table(train_metric_files) -> pd.DataFrame:
    """One row per (dataset, method, seed, curve point): the held-out metric, training time and FLOPs so far."""
    from lorabench.io import read_json

    rows = []
    for f in train_metric_files:
        m = read_json(f)
        metric = m.get("heldout_metric")
        for point in m.get("heldout_curve") or []:
            rows.append({"dataset": m["dataset"], "method": m["method"],
                         "method_type": m.get("method_type", m["method"]),
                         "seed": m["seed"], "step": point["step"], "train_time_s": point["train_time_s"],
                         "train_flops": point["train_flops"], "value": point[metric],
                         "panel": f"{m['dataset']}: held-out {metric}"})
    return pd.DataFrame(rows, columns=["dataset", "method", "method_type", "seed", "step", "train_time_s",
                                       "train_flops", "value", "panel"])


def draw_heldout_curves(train_metric_files, targets: pd.DataFrame, out_dir, colours: dict) -> None:
    """The held-out metric against training time, and against training FLOPs, one panel per dataset and one
    line per method: at each curve step the mean over seeds of the metric and of the time (FLOPs), a band from
    the lowest to the highest seed; each dataset's target dashed (``targets``: panel, target_value)."""
    t = heldout_curve_table(train_metric_files)
    if t.empty:
        t = pd.DataFrame({"panel": ["no held-out curve (evaluation.curve_points, datasets.<name>.holdout_size)"],
                          "method": ["no run"], "method_type": ["lora"], "step": [0], "train_time_s": [0.0],
                          "train_flops": [0.0], "value": [0.0]})
    band = t.groupby(["panel", "method", "method_type", "step"], as_index=False).agg(
        value=("value", "mean"), low=("value", "min"), high=("value", "max"), train_time_s=("train_time_s", "mean"),
        train_flops=("train_flops", "mean"))
    methods = band["method"].nunique()
    colour = "method_type" if methods == band["method_type"].nunique() else "method"
    scale = colour_scales(colours, "method") if colour == "method_type" else []
    target = [p9.geom_hline(p9.aes(yintercept="target_value"), data=targets, linetype="dashed", colour="black")]
    for x, label, name in (("train_time_s", "training time so far (s, evaluation excluded; mean over seeds)",
                            "heldout_vs_time"),
                           ("train_flops", "training FLOPs so far (counted; mean over seeds)", "heldout_vs_flops")):
        _save(p9.ggplot(band, p9.aes(x, "value", colour=colour, fill=colour, group="method"))
              + p9.geom_ribbon(p9.aes(ymin="low", ymax="high"), alpha=0.15, colour="none")
              + p9.geom_line() + p9.geom_point(size=1.5) + (target if len(targets) else [])
              + p9.facet_wrap("~panel", scales="free")
              + p9.labs(x=label, y="held-out metric (line: mean over seeds; band: their range)",
                        title="Time to quality: the held-out metric as training goes on (dashed: the target)")
              + scale + p9.theme_bw() + p9.theme(figure_size=(12, max(4.0, 1.2 + 0.24 * methods))),
              f"{out_dir}/{name}")


def adalora_rank_table(train_metric_files) -> pd.DataFrame:
    """One row per (dataset, method, seed, adapted layer) with its final AdaLoRA rank, from the training jobs'
    metrics (the per-layer ranks are too many columns for the summary)."""
    from lorabench.io import read_json

    rows = []
    for f in train_metric_files:
        m = read_json(f)
        for name, rank in m.get("adalora_layer_ranks", {}).items():
            block = re.search(r"\.(\d+)\.(.+)$", name)
            rows.append({"dataset": m["dataset"], "method": m["method"], "seed": m["seed"],
                         "block": int(block.group(1)) if block else -1,
                         "module": block.group(2) if block else name.split("model.", 1)[-1], "rank": rank,
                         "init_r": m.get("adalora_init_r")})
    return pd.DataFrame(rows)


def draw_adalora_ranks(train_metric_files, out_prefix) -> None:
    """Final rank of every adapted layer (mean over seeds): where AdaLoRA spent its budget."""
    t = adalora_rank_table(train_metric_files)
    if t.empty:
        t = pd.DataFrame({"dataset": ["none"], "method": ["none"], "block": [0], "module": ["no AdaLoRA run"],
                          "rank": [0.0], "init_r": [0]})
    mean = t.groupby(["dataset", "method", "block", "module"], as_index=False)["rank"].mean()
    mean["block"] = mean["block"].map(lambda b: "other" if b < 0 else str(b))
    mean["label"] = mean["rank"].map(lambda r: f"{r:.1f}".rstrip("0").rstrip("."))
    order = sorted(mean["block"].unique(), key=lambda b: (b == "other", int(b) if b != "other" else 0))
    mean["block"] = pd.Categorical(mean["block"], categories=order)
    panels = mean[["dataset", "method"]].drop_duplicates().shape[0]
    _save(p9.ggplot(mean, p9.aes("block", "module", fill="rank")) + p9.geom_tile(colour="white")
          + p9.geom_text(p9.aes(label="label"), size=7)
          + p9.scale_fill_gradient(low="#f7fbff", high="#08306b", name="final rank")
          + p9.facet_wrap("~dataset + method", scales="free")
          + p9.labs(x="transformer block", y="adapted layer",
                    title=f"AdaLoRA: final rank per layer (mean over seeds; started at init_r = "
                          f"{', '.join(map(str, sorted(t['init_r'].dropna().unique())))})")
          + p9.theme_bw() + p9.theme(figure_size=(12, max(3.0, 2.2 * min(panels, 3)))), out_prefix)


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
    from lorabench.analysis.stats import describe

    s = describe(df, ["panel", "dataset", "task", "method", "method_type"], columns)
    for c in columns:
        mean = s.get(f"{c}_mean", pd.Series(float("nan"), index=s.index))
        s[c] = mean
        s[f"{c}_lo"] = s.get(f"{c}_ci95_low", mean).fillna(mean)
        s[f"{c}_hi"] = s.get(f"{c}_ci95_high", mean).fillna(mean)
    return s


def _theme(colours: dict, width=12, height=4):
    return [*colour_scales(colours, "method type"),
            p9.theme_bw(), p9.theme(figure_size=(width, height))]


def _save(plot, out_prefix) -> None:
    plot.save(f"{out_prefix}.png", dpi=110, verbose=False)
    plot.save(f"{out_prefix}.svg", verbose=False)


def draw_all(summary_csv, out_dir, train_metrics=(), baseline: str = "lora", traits: dict | None = None,
             figures: Iterable[str] = ()) -> None:
    """Every figure of ``figures`` (figures_for's list); ``train_metrics`` are the runs' training-metrics files
    (loss curves, AdaLoRA's per-layer ranks), ``traits`` each method type's (Method.traits: family, colour,
    whether it trains or prunes its adapter)."""
    traits = traits or {}
    colours = {t: v["colour"] for t, v in traits.items() if v.get("colour")}
    df = variant_columns(task_metric(pd.read_csv(summary_csv)), traits)
    # The untrained base is a level, not a method: a dashed line where the metric is drawn, absent elsewhere.
    untrained = df[df["untrained"]].groupby("panel", as_index=False)["metric"].mean()
    df = df[~df["untrained"]]
    df["step_time_s"] = df["train_time_s"] / df["train_steps"]
    cols = ["metric", "trainable_params", "train_time_s", "step_time_s", "ffn_matmul_fraction", "peak_train_mem_mb",
            "peak_infer_mem_mb", "throughput_per_s", "adapter_sparsity", "adapter_params", "base_weight_bits"]
    s = seed_summary(df, [c for c in cols if c in df])
    s = s.merge(df.drop_duplicates("method")[["method", "quantize", "family", "prunes_adapter"]], on="method",
                how="left")
    # Tall enough for both legends (one entry per method type, one per variant).
    legend = (s["method"].nunique() if s["method"].nunique() <= MAX_SHAPES else 0) + s["method_type"].nunique()
    height = max(4.0, 1.2 + 0.24 * legend)
    _draw_metric_figures(s, untrained, out_dir, colours, height)
    _draw_cost_figures(s, out_dir, colours)
    draw_loss_curves(train_metrics, f"{out_dir}/loss_curves", colours)
    summary = pd.read_csv(summary_csv)
    targets = (summary.dropna(subset=["target_value"]).drop_duplicates("dataset")
               .assign(panel=lambda d: d["dataset"] + ": held-out " + d["heldout_metric"])[["panel", "target_value"]]
               if "target_value" in summary else pd.DataFrame(columns=["panel", "target_value"]))
    draw_heldout_curves(train_metrics, targets, out_dir, colours)
    wanted = set(figures)
    if "adalora_ranks" in wanted:
        draw_adalora_ranks(train_metrics, f"{out_dir}/adalora_ranks")
    if "metric_vs_sparsity" in wanted:
        draw_sparsity(s, baseline, f"{out_dir}/metric_vs_sparsity", height, colours)
    if "bits" in wanted:
        draw_bits(s, f"{out_dir}/bits")
    if "sparselora_speed" in wanted:
        draw_sparselora_speed(s, baseline, f"{out_dir}/sparselora_speed", colours)


def _draw_metric_figures(s: pd.DataFrame, untrained: pd.DataFrame, out_dir, colours: dict, height: float) -> None:
    """The task metric against trainable parameters and against inference throughput."""
    level = [p9.geom_hline(p9.aes(yintercept="metric"), data=untrained, linetype="dashed", colour="grey")]
    errorbar = p9.geom_errorbar(p9.aes(ymin="metric_lo", ymax="metric_hi"), width=0.04)
    # A shape per variant while shapes can tell them apart (plotnine has 13); beyond that colour by type only,
    # and the curves through each type's variants carry the sweep.
    by_type = {"colour": "method_type", **({"shape": "method"} if s["method"].nunique() <= MAX_SHAPES else {})}
    # One curve per type through its variants (rank sweeps give a curve; a single variant is a point).
    # Drawn only through variants that differ in size and share a base (the quantized ones stay points).
    s = s.assign(curve=s["method_type"] + " / " + s["quantize"])
    sizes = s.groupby("curve")["trainable_params"].transform("nunique")
    curves = p9.geom_line(p9.aes(group="curve"), data=s[sizes > 1].sort_values("trainable_params"), alpha=0.6)
    _save(p9.ggplot(s, p9.aes("trainable_params", "metric", **by_type)) + level + curves + errorbar
          + p9.geom_point(size=3) + p9.scale_x_log10() + p9.facet_wrap("~panel", scales="free")
          + p9.labs(x="trainable parameters (count, log scale)", y="task metric (mean over seeds, 95% CI)",
                    title="Task metric vs trainable parameters"
                          + (" (dashed: the untrained base)" if len(untrained) else "")) + _theme(colours, 12, height),
          f"{out_dir}/metric_vs_trainable_params")
    if "throughput_per_s" in s:
        _save(p9.ggplot(s, p9.aes("throughput_per_s", "metric", **by_type)) + errorbar + p9.geom_point(size=3)
              + p9.facet_wrap("~panel", scales="free")
              + p9.labs(x="inference throughput (examples/s, unmerged adapter)", y="task metric (mean, 95% CI)",
                        title="Inference throughput vs task metric") + _theme(colours, 12, height),
              f"{out_dir}/throughput_vs_metric")


def _draw_cost_figures(s: pd.DataFrame, out_dir, colours: dict) -> None:
    """Training time, peak memory by phase, and the memory-metric Pareto frontier."""
    _save(p9.ggplot(s, p9.aes("method", "train_time_s", fill="method_type")) + p9.geom_col()
          + p9.geom_errorbar(p9.aes(ymin="train_time_s_lo", ymax="train_time_s_hi"), width=0.3)
          + p9.facet_wrap("~dataset", scales="free_y") + p9.coord_flip()
          + p9.labs(x="", y="training time (s, mean over seeds, 95% CI)", title="Training time per method")
          + _theme(colours), f"{out_dir}/train_time")
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
                    title="Peak training and inference memory per method") + _theme(colours, 12, 6), f"{out_dir}/memory")
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
                    title="Memory vs task metric: the Pareto frontier (diamonds, grey line)") + _theme(colours),
          f"{out_dir}/pareto_memory_metric")


def _sparsity_curves(s: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Points of every sparse type against measured adapter sparsity; the baseline (dense LoRA with the same
    adapter) starts each type's curve at its own sparsity."""
    sparse = s[s["prunes_adapter"].fillna(False).astype(bool)]
    base = s[s["method"] == baseline]
    starts = [base.assign(method_type=t) for t in sparse["method_type"].unique()] if len(base) else []
    return pd.concat([sparse, *starts], ignore_index=True)


def draw_sparsity(s: pd.DataFrame, baseline: str, out_prefix, height: float, colours: dict) -> None:
    c = _sparsity_curves(s, baseline).sort_values("adapter_sparsity")
    _save(p9.ggplot(c, p9.aes("adapter_sparsity", "metric", colour="method_type"))
          + p9.geom_line() + p9.geom_point(size=2.5)
          + p9.geom_errorbar(p9.aes(ymin="metric_lo", ymax="metric_hi"), width=0.015)
          + p9.facet_wrap("~panel", scales="free")
          + p9.labs(x="adapter sparsity (measured fraction of zero adapter weights, mean over seeds)",
                    y="task metric (mean over seeds, 95% CI)",
                    title=f"Task metric against adapter sparsity (the curves start at {baseline}, the dense adapter)")
          + _theme(colours, 12, height), out_prefix)


def draw_sparselora_speed(s: pd.DataFrame, baseline: str, out_prefix, colours: dict) -> None:
    """Contextual sparsity's trade: seconds per optimizer step against the task metric, each SparseLoRA variant
    (labelled with the share of FFN multiply-adds it still computed) beside the dense baseline."""
    pts = s[s["ffn_matmul_fraction"].notna() | (s["method"] == baseline)].copy()
    pts["label"] = [m if pd.isna(f) else f"{m} ({100 * f:.0f}% of FFN MACs)"
                    for m, f in zip(pts["method"], pts["ffn_matmul_fraction"])]
    _save(p9.ggplot(pts, p9.aes("step_time_s", "metric", colour="method_type"))
          + p9.geom_linerange(p9.aes(ymin="metric_lo", ymax="metric_hi"))
          + p9.geom_segment(p9.aes(x="step_time_s_lo", xend="step_time_s_hi", y="metric", yend="metric"))
          + p9.geom_point(size=3) + p9.geom_text(p9.aes(label="label"), size=7, va="bottom", ha="left")
          + p9.facet_wrap("~panel", scales="free")
          + p9.labs(x="training time per optimizer step (s, mean over seeds, 95% CI)",
                    y="task metric (mean over seeds, 95% CI)",
                    title=f"SparseLoRA: speed against task metric ({baseline}: the dense reference)")
          + _theme(colours, 12, 4.5), out_prefix)


def _bits_label(row) -> str:
    if row["quantize"] == "none":
        return "32 (none)"
    return f"{int(row['base_weight_bits'])} ({row['quantize']})" if "bit" not in row["quantize"] else \
        f"{int(row['base_weight_bits'])} (quantized)"


def draw_bits(s: pd.DataFrame, out_prefix) -> None:
    """Every quantized variant with its full-precision siblings (same adapter family, same adapter size):
    metric and peak training memory against the bits of the base."""
    quantized = s[s["quantize"] != "none"][["family", "adapter_params"]].drop_duplicates()
    group = s.merge(quantized, on=["family", "adapter_params"])
    group["bits"] = group.apply(_bits_label, axis=1)
    group["adapter"] = group["family"] + ", " + group["adapter_params"].map(lambda n: f"{int(n):,}") + " params"
    order = sorted(group["bits"].unique(), key=lambda b: (-int(b.split(" ")[0]), b))
    parts = []
    for quantity, col in (("task metric", "metric"), ("peak training memory (MB)", "peak_train_mem_mb")):
        part = group[["panel", "adapter", "bits", col, f"{col}_lo", f"{col}_hi"]].copy()
        part.columns = ["panel", "adapter", "bits", "value", "lo", "hi"]
        part["quantity"] = quantity
        parts.append(part)
    long = pd.concat(parts)
    long["bits"] = pd.Categorical(long["bits"], categories=order)
    _save(p9.ggplot(long, p9.aes("bits", "value", colour="adapter", group="adapter")) + p9.geom_line(alpha=0.6)
          + p9.geom_point(size=3) + p9.geom_errorbar(p9.aes(ymin="lo", ymax="hi"), width=0.15)
          + p9.facet_grid("quantity~panel", scales="free_y")
          + p9.labs(x="bits per weight of the frozen base (quantization)", y="mean over seeds, 95% CI",
                    title="The same adapter on a full-precision, 8-bit and 4-bit base")
          + p9.theme_bw() + p9.theme(figure_size=(12, 6)), out_prefix)
