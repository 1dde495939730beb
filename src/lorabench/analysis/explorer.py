"""results/explorer.html: the summary as one self-contained interactive page (Bokeh, its JavaScript inline).

Pick a dataset and any two metrics: one point per method (the mean over seeds) with 95% interval bars on both
axes, the Pareto frontier for those two metrics (the direction of "better" taken from each metric), the
untrained base as a dashed level, the method's type, settings, seeds and verdict against the baseline on
hover, and a table of the same rows, sortable by any column. Everything is in the file: it opens from disk
with no network.

Bokeh rather than plotly or Vega-Altair: its inline resources are about a quarter of plotly's bundle, it draws
interval bars (``Whisker``) and a sortable ``DataTable`` itself, and a ``CustomJS`` callback redraws the
page in the browser without a server; Altair's inline mode needs its renderer fetched or a converter
installed. The only hand-written parts are the redraw and the frontier (explorer.js), which no library
computes for a metric pair picked at view time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from lorabench.analysis.comparisons import summary_by_method
from lorabench.analysis.metrics import primary_metric, variant_columns
from lorabench.analysis.stats import pareto_front

#: The metrics on offer, in menu order: (summary column, label with unit, higher is better).
METRICS = [
    ("accuracy", "accuracy", True),
    ("macro_f1", "macro-F1", True),
    ("perplexity", "perplexity", False),
    ("peak_train_mem_mb", "peak training memory (MB)", False),
    ("peak_infer_mem_mb", "peak inference memory (MB)", False),
    ("train_time_s", "training time (s)", False),
    ("time_to_target_s", "training time to the held-out target (s; runs that reached it)", False),
    ("flops_to_target", "training FLOPs to the held-out target (runs that reached it)", False),
    ("cost_to_target_usd", "cost to the held-out target (USD; runs that reached it)", False),
    ("trainable_params", "trainable parameters", False),
    ("train_flops", "training FLOPs", False),
    ("flops_per_example", "inference FLOPs per example", False),
    ("latency_ms", "latency, batch 1 (ms)", False),
    ("throughput_per_s", "throughput (examples/s)", True),
    ("cost_usd", "cost (USD)", False),
    ("device_hours", "device-hours", False),
    ("adapter_size_mb", "saved size on disk (MB)", False),
]
DEFAULT_X = "peak_train_mem_mb"
SCRIPT = Path(__file__).with_name("explorer.js")


def _finite(value):
    return float(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else None


def _verdicts(significance: pd.DataFrame, baseline: str) -> dict:
    """(dataset, method) -> one line against the baseline from significance.csv (its verdict where it has
    one, else the difference and the Holm-adjusted p-values)."""
    out = {}
    for r in significance.to_dict("records"):
        if "verdict" in r and isinstance(r["verdict"], str):
            mde = f", MDE {r['mde']:.3g}" if _finite(r.get("mde")) is not None else ""
            text = f"{r['verdict']} against {baseline} (difference {r['diff']:+.4g}{mde})"
        else:
            ps = [f"{name} p = {r[col]:.3g}" for name, col in (("paired t", "p_paired_t_holm"),
                                                                 ("McNemar", "p_mcnemar_exact_holm"))
                  if col in r and _finite(r[col]) is not None]
            text = f"{r['metric']} {r['diff']:+.4g} against {baseline}" + (f" (Holm-adjusted {', '.join(ps)})"
                                                                          if ps else " (too few seeds to test)")
        out[(r["dataset"], r["method"])] = text
    return out


def explorer_rows(summary: pd.DataFrame, significance: pd.DataFrame, baseline: str, traits: dict,
                  settings: dict) -> tuple[list[dict], dict]:
    """The page's data: one row per trained (dataset, method) with every metric's mean and 95% interval, and per
    dataset the untrained base's mean of each metric (the reference level)."""
    variants = variant_columns(summary, traits)
    untrained = set(variants.loc[variants["untrained"], "method"])
    by_method = summary_by_method(summary)
    verdicts = _verdicts(significance, baseline)
    seeds = summary.groupby(["dataset", "method"])["seed"].apply(lambda s: ", ".join(map(str, sorted(s))))
    rows, levels = [], {}
    for r in by_method.to_dict("records"):
        values = {}
        for m, _, _ in METRICS:
            values[m] = _finite(r.get(f"{m}_mean"))
            values[f"{m}_lo"] = _finite(r.get(f"{m}_ci95_low"))
            values[f"{m}_hi"] = _finite(r.get(f"{m}_ci95_high"))
        if r["method"] in untrained:
            levels[r["dataset"]] = {m: values[m] for m, _, _ in METRICS if values[m] is not None}
            continue
        kind = r.get("method_type", r["method"])
        given = {k: v for k, v in settings.get(r["method"], {}).items() if k not in ("type", "lr_reason", "by_model")}
        rows.append({"dataset": r["dataset"], "method": r["method"], "type": kind,
                     "colour": (traits.get(kind) or {}).get("colour") or "#555555",
                     "seeds": seeds.get((r["dataset"], r["method"]), ""),
                     "settings": json.dumps(given, sort_keys=True, default=str),
                     "verdict": "the baseline" if r["method"] == baseline
                     else verdicts.get((r["dataset"], r["method"]), "not compared"),
                     **values})
    return rows, levels


def _frontier_flags(rows: list[dict], x: str, y: str) -> list[str]:
    """'yes' for the rows on the Pareto frontier of metrics ``x`` and ``y`` (explorer.js redraws it in the
    browser for any pair; this fills the page's first view, which the browser's table keeps)."""
    higher = {m: h for m, _, h in METRICS}
    points = pd.DataFrame({"cost": [(-1 if higher[x] else 1) * (r[x] if r[x] is not None else math.nan) for r in rows],
                           "value": [r[y] if r[y] is not None else math.nan for r in rows]})
    ok = points.notna().all(axis=1)
    front = pd.Series(False, index=points.index)
    if ok.any():
        front[ok] = pareto_front(points[ok], "cost", "value", higher[y])
    return ["yes" if f else "no" for f in front]


def write_explorer(summary_csv, significance_csv, out_html, baseline: str, traits: dict | None = None,
                   settings: dict | None = None) -> None:
    """Write the page for a finished run (the explorer rule)."""
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    summary = pd.read_csv(summary_csv)
    significance = pd.read_csv(significance_csv)
    rows, levels = explorer_rows(summary, significance, baseline, traits or {}, settings or {})
    primary = {d: primary_metric(task)[0] for d, task in summary.groupby("dataset")["task"].first().items()}
    page, redraw = _layout(rows, levels, primary)
    doc = Document()
    doc.add_root(page)
    doc.js_on_event("document_ready", redraw)  # the first drawing runs the same code as every later change
    Path(out_html).write_text(file_html(doc, INLINE, title="lorabench explorer"))


def _layout(rows: list[dict], levels: dict, primary: dict):
    from bokeh.layouts import column, row
    from bokeh.models import (ColumnDataSource, CustomJS, DataTable, Div, HoverTool, NumberFormatter, Select, Span,
                              TableColumn, Whisker)
    from bokeh.plotting import figure

    available = [m for m, _, _ in METRICS if any(r[m] is not None for r in rows)]
    labels = {m: label for m, label, _ in METRICS}
    datasets = sorted(primary)
    full = ColumnDataSource({k: [r[k] for r in rows] for k in (rows[0] if rows else {"dataset": []})},
                            name="full")
    view_columns = ["method", "type", "colour", "seeds", "settings", "verdict", "frontier", "x", "y", "x_lo", "x_hi",
                    "y_lo", "y_hi", *available]
    # Filled with the first dataset's points, so the plot has ranges before the first redraw replaces them.
    view = ColumnDataSource({k: [] for k in view_columns}, name="view")
    first_rows = [r for r in rows if r["dataset"] == (datasets[0] if datasets else None)]
    front = ColumnDataSource({"x": [], "y": []}, name="front")
    plot = figure(width=1000, height=520, name="plot", tools="pan,wheel_zoom,box_zoom,reset,save")
    points = plot.scatter("x", "y", source=view, size=11, color="colour", legend_field="type", name="points")
    plot.line("x", "y", source=front, color="grey", line_width=2, name="frontier")
    plot.scatter("x", "y", source=front, size=17, fill_alpha=0, line_color="black", name="frontier_marks")
    # Whiskers are annotations, which the auto-ranges ignore: invisible points at the bars' ends keep every
    # interval inside the plot, not only the means.
    for x, y in (("x", "y_lo"), ("x", "y_hi"), ("x_lo", "y"), ("x_hi", "y")):
        plot.scatter(x, y, source=view, size=1, alpha=0, name=f"bounds_{x}_{y}")
    plot.add_layout(Whisker(source=view, base="x", lower="y_lo", upper="y_hi", dimension="height"))
    plot.add_layout(Whisker(source=view, base="y", lower="x_lo", upper="x_hi", dimension="width"))
    level = Span(location=0, dimension="width", line_dash="dashed", line_color="grey", visible=False, name="base")
    plot.add_layout(level)
    plot.add_layout(plot.legend[0], "right")
    plot.add_tools(HoverTool(renderers=[points], tooltips=[
        ("method", "@method (@type)"), ("seeds", "@seeds"), ("settings", "@settings"),
        ("x", "@x (95% CI @x_lo to @x_hi)"), ("y", "@y (95% CI @y_lo to @y_hi)"), ("verdict", "@verdict")]))
    first = datasets[0] if datasets else ""
    x0, y0 = (DEFAULT_X if DEFAULT_X in available else available[0]), primary.get(first, available[0])
    view.data = {**{k: [r.get(k) for r in first_rows] for k in view_columns},
                 "x": [r[x0] for r in first_rows], "y": [r[y0] for r in first_rows],
                 "frontier": _frontier_flags(first_rows, x0, y0),
                 **{f"{a}_{end}": [r[f"{m}_{end}"] for r in first_rows] for a, m in (("x", x0), ("y", y0))
                    for end in ("lo", "hi")}}
    dsel = Select(title="dataset", value=first, options=datasets, name="dataset")
    xsel = Select(title="x", value=x0,
                  options=[(m, labels[m]) for m in available], name="x")
    ysel = Select(title="y", value=y0, options=[(m, labels[m]) for m in available],
                  name="y")
    note = Div(text="", name="note", width=820)
    fmt = NumberFormatter(format="0.[0000]")
    most = max([sum(r["dataset"] == d for r in rows) for d in datasets] or [0])
    table = DataTable(source=view, name="table", width=1200, height=40 + 26 * most, sortable=True, reorderable=False,
                      columns=[
        TableColumn(field="method", title="method"), TableColumn(field="type", title="type"),
        TableColumn(field="seeds", title="seeds"), TableColumn(field="frontier", title="on the frontier"),
        TableColumn(field="verdict", title="against the baseline", width=300),
        *[TableColumn(field=m, title=labels[m], formatter=fmt) for m in available]])
    redraw = CustomJS(args=dict(full=full, view=view, front=front, level=level, dsel=dsel, xsel=xsel, ysel=ysel,
                                xaxis=plot.xaxis[0], yaxis=plot.yaxis[0], note=note, levels=levels,
                                primary=primary, metrics={m: [label, hib] for m, label, hib in METRICS},
                                columns=available), code=SCRIPT.read_text())
    for widget in (dsel, xsel, ysel):
        widget.js_on_change("value", redraw)
    page = column(Div(text="<h2>lorabench explorer</h2><p>One point per method: the mean over seeds, bars its "
                           "95% interval on each axis. Diamond ring and grey line: the Pareto frontier for the "
                           "two metrics shown (each metric's better direction). Dashed: the untrained base.</p>"),
                  row(dsel, xsel, ysel), note, plot, table)
    return page, redraw
