"""results/report.md, with results/summary_by_method.csv and results/significance.csv beside it: sentences and
tables written from the comparisons (lorabench.analysis.comparisons), every number computed from the runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.analysis import stats
from lorabench.analysis.comparisons import (CONTEXT_COLUMNS, convergence_table, distinct_values, significance,
                                           summary_by_method, unlike)
from lorabench.analysis.convergence import MAX_P, MDE_Z, STEEP_DROP, TAIL_FRACTION
from lorabench.analysis.discussion import ci_text, discussion_lines, fmt_number
from lorabench.analysis.metrics import primary_metric
from lorabench.analysis.time_to_quality import HIGHER_IS_BETTER, quality_table


def _p(x) -> str:
    return "n/a (too few seeds)" if pd.isna(x) else (f"{x:.2g}" if x >= 1e-4 else "< 1e-4")


def tradeoff_sentences(by_method: pd.DataFrame, sig: pd.DataFrame, baseline: str, untrained_types=()) -> list[str]:
    """Sentences computed from the numbers: memory, time and size relative to the baseline, with the metric cost
    (the untrained base, of ``untrained_types``, is a level, not a method)."""
    out = []
    for dataset, g in by_method.groupby("dataset"):
        task = g["task"].iloc[0]
        metric, higher = primary_metric(task)
        base = g[g["method"] == baseline]
        if base.empty or f"{metric}_mean" not in g:
            continue
        b = base.iloc[0]
        unit = "accuracy points" if task == "classification" else "perplexity"
        scale = 100.0 if task == "classification" else 1.0
        trained = g[(g["method"] != baseline) & ~g.get("method_type", g["method"]).isin(list(untrained_types))]
        for _, r in trained.iterrows():
            s = sig[(sig["dataset"] == dataset) & (sig["method"] == r["method"])] if not sig.empty else sig
            p = s["p_paired_t_holm"].iloc[0] if not s.empty else np.nan
            verdict = _verdict_text(s.iloc[0], scale, unit) if not s.empty and "verdict" in s else ""
            delta = scale * (r[f"{metric}_mean"] - b[f"{metric}_mean"])
            mem = 100.0 * (r["peak_train_mem_mb_mean"] / b["peak_train_mem_mb_mean"] - 1)
            tm = 100.0 * (r["train_time_s_mean"] / b["train_time_s_mean"] - 1)
            ci = ""
            if not pd.isna(r.get("peak_train_mem_mb_ci95_low")):
                ci = (f" (its own 95% CI {r['peak_train_mem_mb_ci95_low']:.0f}-{r['peak_train_mem_mb_ci95_high']:.0f} MB"
                      f" vs {b['peak_train_mem_mb_ci95_low']:.0f}-{b['peak_train_mem_mb_ci95_high']:.0f} MB)")
            differ = unlike(r.to_frame().T, base)
            memory = (f"{'cut' if mem < 0 else 'raised'} peak training memory by {abs(mem):.0f}%{ci}"
                      if "memory kind" not in differ else
                      f"has no memory comparison (its memory and {baseline}'s are unlike quantities: "
                      f"{differ['memory kind']})")
            where = f" Not like for like: devices {differ['device']}." if "device" in differ else ""
            out.append(
                f"**{dataset}**: {r['method']} {memory} "
                f"and took {abs(tm):.0f}% {'less' if tm < 0 else 'more'} training time than {baseline}, for "
                f"{delta:+.2f} {unit} (Holm-adjusted paired t p = {_p(p)}){verdict}.{where}"
            )
    return out


def contextual_sparsity_sentences(summary: pd.DataFrame, reference: str = "lora") -> list[str]:
    """SparseLoRA-style methods (those that report ``ffn_sparse_layers``) against plain LoRA (the method named
    ``reference``, else the first variant of that type), per dataset: the
    training step's speed-up (ratio of seconds per optimizer step, paired by seed), the counted training FLOPs
    and the metric, each with its 95% interval over seeds."""
    if reference not in set(summary["method"]) and "method_type" in summary:  # a variant of that type instead
        variants = sorted(summary.loc[summary["method_type"] == reference, "method"].unique())
        reference = variants[0] if variants else reference
    if "ffn_sparse_layers" not in summary or reference not in set(summary["method"]):
        return []
    out = []
    sparse_methods = sorted(summary.loc[summary["ffn_sparse_layers"].notna(), "method"].unique())
    for dataset, g in summary.groupby("dataset"):
        metric, _ = primary_metric(g["task"].iloc[0])
        ref = g[g["method"] == reference].set_index("seed")
        for method in sparse_methods:
            m = g[g["method"] == method].set_index("seed")
            seeds = sorted(set(m.index) & set(ref.index))
            if not seeds or ref.empty:
                continue
            step = lambda d: d.loc[seeds, "train_time_s"] / d.loc[seeds, "train_steps"]  # noqa: E731
            speed, _, s_lo, s_hi = stats.t_interval(step(ref) / step(m))
            flops = float((m.loc[seeds, "train_flops"] / ref.loc[seeds, "train_flops"]).mean())
            diff, _, d_lo, d_hi = stats.t_interval(m.loc[seeds, metric] - ref.loc[seeds, metric])
            first = m.iloc[0]
            heads = (f" and its attention heads {100 * first['attn_matmul_fraction']:.0f}% of theirs"
                     if first.get("attn_sparse_layers", 0) > 0 else "")  # (averaged over all layers)
            out.append(
                f"**{dataset}**: {method} ({first['ffn_sparse_layers']:.0f} sparse layers; after "
                f"{first['dense_warmup_steps']:.0f} dense warm-up steps its FFNs computed "
                f"{100 * first['ffn_matmul_fraction']:.0f}% of their channels{heads}) trained {speed:.2f}x as fast per "
                f"optimizer step as {reference}{ci_text(s_lo, s_hi)}, computing {flops:.2f}x its training FLOPs; "
                f"{metric} {diff:+.3g} against {reference}{ci_text(d_lo, d_hi)}.")
    return out


def _precision_note(summary: pd.DataFrame) -> str:
    """', in bf16 (config: auto)' etc.: the precision the runs trained, evaluated and were timed in."""
    if "precision" not in summary:
        return ""
    ran = ", ".join(sorted(summary["precision"].dropna().unique()))
    asked = (", ".join(sorted(summary["precision_requested"].dropna().unique()))
             if "precision_requested" in summary else "?")
    return f", forward passes in {ran} (config precision: {asked}; weights and optimizer state in fp32)"


def _devices_note(summary: pd.DataFrame) -> str:
    """Every device the runs trained on, with its count of runs, and the efficiency jobs' where they differ."""
    def listed(col: str) -> str:
        counts = summary[col].dropna().astype(str).value_counts()
        return "; ".join(f"{d} ({n} run{'s' if n != 1 else ''})" for d, n in sorted(counts.items()))

    note = listed("device") if "device" in summary else "an unrecorded device"
    if "efficiency_device" in summary and set(summary["efficiency_device"].dropna()) != set(summary["device"]):
        note += f" (efficiency timed on {listed('efficiency_device')})"
    return note


def _mixed_lines(summary: pd.DataFrame) -> list[str]:
    """A warning where the runs mix device models or memory kinds: comparisons across them are not like for like
    (memory ones are refused; the others say so where they cross)."""
    lines = []
    for what, columns in CONTEXT_COLUMNS.items():
        values = sorted(set().union(*(distinct_values(summary[c]) for c in columns if c in summary)))
        if len(values) > 1:
            lines.append(f"**Mixed {what}s**: {', '.join(values)}. "
                         + ("Memory is compared only between runs measured the same way (runtime/memory.py: "
                            "resident memory on a CPU, the CUDA allocator's bytes on a GPU)."
                            if what == "memory kind" else
                            "A comparison of runs on different devices says so; speed and memory differ by device."))
    return lines + [""] if lines else []


def _table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(fmt_number(v) if not isinstance(v, str) else v for v in r) + " |\n"
                   for r in df[cols].itertuples(index=False))
    return head + body


def _verdict_text(r, scale: float, unit: str) -> str:
    """': <verdict>' with what qualifies it: the MDE where unresolved, the margin where equivalent."""
    if r["verdict"] == "unresolved":
        mde = "undefined with fewer than two seeds" if pd.isna(r["mde"]) else f"{scale * r['mde']:.2f} {unit}"
        return f": unresolved, not 'no difference' (the smallest difference these seeds could detect: {mde})"
    if r["verdict"] == "equivalent":
        return f": equivalent within +-{scale * r['equivalence_margin']:.2f} {unit}"
    return ": differs"


def resolution_lines(sig: pd.DataFrame) -> list[str]:
    """The Significance section's account of what the tests could and could not resolve."""
    if "verdict" not in sig:
        return []
    counts = sig["verdict"].value_counts()
    lines = [f"Verdicts: {', '.join(f'{counts.get(v, 0)} {v}' for v in ('differs', 'equivalent', 'unresolved'))} "
             f"of {len(sig)} comparisons. 'differs': Holm-adjusted paired t p < 0.05 over seeds; 'equivalent': the "
             "90% interval of the mean difference over seeds lies inside +-`evaluation.equivalence_margin` (two "
             "one-sided tests at 0.05); 'unresolved': neither, so a difference smaller than the MDE may be there "
             "or not. `mde`: the smallest difference the paired t-test detects at 80% power and alpha 0.05 with the "
             "observed spread over seeds; `mde_mcnemar`: the same for McNemar's test on the pooled eval examples.", ""]
    for r in sig[sig["verdict"] == "unresolved"].itertuples():
        scale, unit = (100.0, "points") if r.metric in ("accuracy", "macro_f1") else (1.0, r.metric)
        need = []
        if pd.notna(r.seeds_to_resolve):
            need.append(f"about {r.seeds_to_resolve:.0f} seeds (paired t)")
        if pd.notna(getattr(r, "examples_to_resolve", np.nan)):
            need.append(f"about {r.examples_to_resolve:,.0f} eval examples pooled over seeds (McNemar; "
                        f"{r.examples_pooled:,.0f} now)")
        mde = "n/a" if pd.isna(r.mde) else f"{scale * r.mde:.2f} {unit}"
        lines.append(f"- {r.method} on {r.dataset}: difference {scale * r.diff:+.2f} {unit}, MDE {mde}; "
                     + (f"a difference of this size would need {' or '.join(need)}."
                        if need else "too few seeds to say how many more would resolve it."))
    return lines + [""]


def write_report(summary_csv, runs_dir, baseline: str, out_by_method, out_significance, out_md,
                 traits: dict | None = None, figures=(), figures_dir="figures", margins: dict | None = None) -> None:
    """The report and its two tables; ``traits`` are the method types' (Method.traits), ``figures`` the names
    of the figures the plot job draws, ``margins`` the equivalence margin per metric (significance.csv's
    verdicts)."""
    traits = traits or {}
    untrained = [kind for kind, v in traits.items() if v.get("untrained")]
    summary = pd.read_csv(summary_csv)
    by_method = summary_by_method(summary)
    by_method.to_csv(out_by_method, index=False)
    sig = significance(summary, runs_dir, baseline, margins)
    sig.to_csv(out_significance, index=False)
    seeds = sorted(summary["seed"].unique())
    lines = [
        "# lorabench report", "",
        f"Generated from `{Path(summary_csv).name}` ({len(summary)} runs: {summary['dataset'].nunique()} datasets, "
        f"{summary['method'].nunique()} methods, seeds {', '.join(map(str, seeds))}) on "
        f"{_devices_note(summary)}{_precision_note(summary)}. Means over seeds with 95% t-intervals; every "
        "number below is computed, none typed by hand. How each metric is measured: docs/methodology.md.", "",
        *_mixed_lines(summary),
        "## Trade-offs against the baseline", "",
        *[f"- {s}" for s in tradeoff_sentences(by_method, sig, baseline, untrained)], "",
        *discussion_lines(summary, baseline, traits, margins),
        *_sparselora_section(summary),
    ]
    for dataset, g in by_method.groupby("dataset"):
        metric, _ = primary_metric(g["task"].iloc[0])
        lines += [f"## {dataset}", "", _table(g, ["method", "precision", "n", f"{metric}_mean", f"{metric}_ci95_low",
                  f"{metric}_ci95_high", "trainable_params_mean", "peak_train_mem_mb_mean", "train_time_s_mean",
                  "latency_ms_mean", "throughput_per_s_mean", "adapter_size_mb_mean", "flops_per_example_mean",
                  "adapter_sparsity_mean", "cost_usd_mean"]), ""]
    lines += _time_to_quality_section(summary)
    lines += _convergence_section(convergence_table(summary, untrained))
    if not sig.empty:
        lines += ["## Significance against " + baseline, "",
                  "`p_paired_t`: paired t-test over seeds; `p_mcnemar_exact`: exact McNemar on per-example "
                  "predictions pooled over seeds; `diff_boot_ci95_*`: paired bootstrap of examples; `*_holm`: "
                  "Holm-adjusted over all comparisons.", "", *resolution_lines(sig),
                  _table(sig, ["dataset", "method", "metric", "n_seeds", "diff", "diff_boot_ci95_low",
                               "diff_boot_ci95_high", "p_paired_t_holm", "p_mcnemar_exact_holm", "verdict", "mde",
                               "mde_mcnemar"]), ""]
    reasons = summary.dropna(subset=["lr_reason"]).drop_duplicates("method") if "lr_reason" in summary else []
    if len(reasons):
        lines += ["## Learning rates that differ, and why", ""]
        lines += [f"- {r.method}: lr {r.lr:g}: {r.lr_reason}" for r in reasons.itertuples()] + [""]
    lines += ["## Figures", ""] + [f"![{f}]({figures_dir}/{f}.png)" for f in figures] + [""]
    Path(out_md).write_text("\n".join(lines))


def _time_to_quality_section(summary: pd.DataFrame) -> list[str]:
    """Per dataset with a target: methods ranked by median training time to it, every run counted."""
    table = quality_table(summary)
    if table.empty:
        return []
    lines = ["## Time to quality", "",
             "Each run's held-out curve (its metric on a slice held out of the train split, never the eval split, "
             "at a few evenly spaced optimizer steps) is read for the first point at or past the dataset's target "
             "(accuracy: at or above; perplexity: at or below). Methods are ranked by the median training time "
             "to it over seeds (evaluation excluded), runs that never reached it counted as never (so a method "
             "most of whose runs missed has no median: 'not reached'). The interval is the distribution-free one "
             "for a median from the seeds' order statistics, at the coverage shown (with 3 seeds: their minimum "
             "and maximum, 75%). A time to target is that of a curve point: late by at most the curve's spacing "
             "(column spacing_steps), so methods closer than one spacing are not told apart.", ""]
    for dataset, g in table.groupby("dataset", sort=False):
        metric = g["metric"].iloc[0]
        lines += [f"### {dataset}: held-out {metric} {'>=' if HIGHER_IS_BETTER[metric] else '<='} "
                  f"{g['target'].iloc[0]:g}", ""]
        shown = pd.DataFrame({
            "rank": [str(i) if np.isfinite(t) else "-"  # no rank without a median time
                     for i, t in enumerate(g["median_time_to_target_s"], start=1)],
            "method": g["method"], "reached": g["reached"],
            "median_time_to_target_s": [_finite(v, "{:.1f}") for v in g["median_time_to_target_s"]],
            "interval_s": [f"{_finite(lo, '{:.1f}')} to {_finite(hi, '{:.1f}')} ({c:.0%})" if n > 1
                           else "n/a (one seed)"
                           for lo, hi, c, n in zip(g["time_interval_low_s"], g["time_interval_high_s"],
                                                   g["interval_coverage"], g["runs"])],
            "median_steps": [_finite(v, "{:.0f}") for v in g["median_steps_to_target"]],
            "median_flops": [_finite(v, "{:.3g}") for v in g["median_flops_to_target"]],
            "median_cost_usd": [_finite(v, "{:.2g}") for v in g["median_cost_to_target_usd"]],
            "spacing_steps": g["curve_spacing_steps"].astype(int)})
        lines += [_table(shown, list(shown.columns)), ""]
        missed = g[g["reached_runs"] < g["runs"]]
        if len(missed):
            lines += ["Runs that never reached it: " + ", ".join(f"{r.method} ({r.runs - r.reached_runs} of {r.runs})"
                                                               for r in missed.itertuples()) + ".", ""]
    return lines


def _finite(value: float, fmt: str) -> str:
    return fmt.format(value) if np.isfinite(value) else "not reached"


def _sparselora_section(summary: pd.DataFrame) -> list[str]:
    sparse = contextual_sparsity_sentences(summary)
    if not sparse:
        return []
    return ["## Contextual sparsity (SparseLoRA) against LoRA", "",
            "Step times come from each training job's own loop; the jobs ran one after another on a shared "
            "machine, so the ratio carries that noise. benchmarks/sparselora_speed.py measures it with "
            "both arms interleaved step by step in one process. Evaluation runs dense: the speed-up is a "
            "training speed-up only.", "", *[f"- {s}" for s in sparse], ""]


def _convergence_section(conv: pd.DataFrame) -> list[str]:
    if conv.empty:
        return []
    flagged = conv[conv["still_falling"] > 0]
    stuck = conv[conv["no_progress"] > 0]
    unsure = conv[conv["too_short_to_judge"] > 0]
    improving = conv[conv["heldout_still_improving"] > 0] if "heldout_still_improving" in conv else conv.iloc[:0]
    return ["## Convergence", "",
            f"A run is flagged 'still falling' when a straight line fitted to its training loss over the last "
            f"{TAIL_FRACTION:.0%} of optimizer steps falls by {STEEP_DROP:.0%} or more of that stretch's mean "
            f"loss, with a one-sided p < {MAX_P} (per-batch losses are noisy). Such a method had not converged: "
            "a gap to it may close with more training. A run makes 'no progress' when its mean loss over that "
            f"last stretch is within {STEEP_DROP:.0%} of its first stretch's: it learned little (a "
            "classifier at chance stays near ln 2 = 0.69). A run has 'levelled off' only on positive evidence: "
            f"the one-sided 95% interval of that line's fall excludes a fall of {STEEP_DROP:.0%}; where it does "
            "not, the run is 'too short to judge' (too few or too noisy steps). The figure loss_curves shows "
            "every curve.", "",
            ("Flagged: " + ", ".join(f"{r.method} on {r.dataset} ({r.still_falling} of {r.seeds} seeds)"
                                     for r in flagged.itertuples()) + ".") if len(flagged)
            else "No run was still falling steeply at its end.",
            *([("No progress: " + ", ".join(f"{r.method} on {r.dataset} ({r.no_progress} of {r.seeds} seeds)"
                                            for r in stuck.itertuples()) + ".")] if len(stuck) else []),
            *([("Too short to judge: " + ", ".join(f"{r.method} on {r.dataset} ({r.too_short_to_judge} of "
                                                   f"{r.seeds} seeds)" for r in unsure.itertuples()) + ".")]
              if len(unsure) else []),
            *([("Held-out metric still improving over its last two curve points by more than their minimum "
                f"detectable gain ({MDE_Z:g} standard errors of the difference, paired over the held-out examples): "
                + ", ".join(f"{r.method} on {r.dataset} ({r.heldout_still_improving} of {r.seeds} seeds)"
                            for r in improving.itertuples()) + ". More training may move these.")]
              if len(improving) else []), "",
            _table(conv, list(conv.columns)), ""]
