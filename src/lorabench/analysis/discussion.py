"""The report's "Discussion": the brief's questions answered from whatever runs a config holds.

Every sentence is built from the summary's numbers, each with its 95% interval over seeds or a test, and a
question the runs cannot answer gets a sentence saying what is missing. Variants are matched by what they
share: the same adapter family (qlora is LoRA on a quantized base) and the same number of adapter
parameters, so a comparison changes one thing at a time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lorabench.analysis import stats
from lorabench.analysis.comparisons import distinct_values, unlike
from lorabench.analysis.convergence import NO_PROGRESS, STEEP_DROP, STILL_FALLING, TAIL_FRACTION, TOO_FEW, TOO_SHORT
from lorabench.analysis.metrics import primary_metric, variant_columns

NOT_ENOUGH = "Not enough data"


def fmt_number(x) -> str:
    """A number as the report writes it: 'n/a' when missing, thousands with separators, else 3 significant
    digits (the report's tables and sentences share it)."""
    return "n/a" if pd.isna(x) else (f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}")


def ci_text(low, high) -> str:
    """' (95% CI low to high)', or ' (one seed: no interval)' where there is no interval."""
    return " (one seed: no interval)" if pd.isna(low) else f" (95% CI {fmt_number(low)} to {fmt_number(high)})"


def _with_ci(values) -> str:
    """'mean (95% CI lo to hi)' over seeds, or the mean and 'one seed: no interval'."""
    mean, _, lo, hi = stats.t_interval(values)
    return fmt_number(mean) + ci_text(lo, hi)


def _paired(a: pd.Series, b: pd.Series) -> tuple[str, float, float]:
    """'diff (95% CI ..., paired t p = ...)' of a - b over the seeds both have, the mean difference and the
    p-value (NaN without a test)."""
    seeds = sorted(set(a.index) & set(b.index))
    if len(seeds) < 2:
        point = float((a.loc[seeds] - b.loc[seeds]).mean()) if seeds else float("nan")
        return f"{fmt_number(point)} ({NOT_ENOUGH}: fewer than two shared seeds, no interval, no test)", point, float("nan")
    diff = a.loc[seeds] - b.loc[seeds]
    mean, _, lo, hi = stats.t_interval(diff)
    p = stats.paired_t(a.loc[seeds], b.loc[seeds])
    test = f"paired t p = {p:.2g}" if not pd.isna(p) else "identical differences: no test"
    return f"{mean:+.3g} (95% CI {lo:+.3g} to {hi:+.3g}; {test}; {len(seeds)} seeds)", mean, p


def _verdict(a: pd.Series, b: pd.Series, margin: float = float("nan")) -> str:
    """The verdict on a - b over the seeds both have (stats.verdict, unadjusted: one comparison): 'differs',
    'equivalent within +-margin', or 'unresolved' with the smallest difference these seeds could detect."""
    seeds = sorted(set(a.index) & set(b.index))
    diffs = (a.loc[seeds] - b.loc[seeds]).to_numpy(float)
    if len(seeds) < 2:
        return "unresolved (fewer than two shared seeds)"
    verdict = stats.verdict(stats.paired_t(a.loc[seeds], b.loc[seeds]), stats.tost_interval(diffs), margin)
    if verdict == "equivalent":
        return f"equivalent within +-{fmt_number(margin)}"
    if verdict == "unresolved":
        mde = stats.paired_t_mde(float(np.std(diffs, ddof=1)), len(seeds))
        return f"unresolved, not 'no difference' (the smallest difference these seeds could detect: {fmt_number(mde)})"
    return verdict


def _label(row) -> str:
    return f"{row.method} ({row.method_type})" if row.method != row.method_type else row.method


class Runs:
    """The summary, with what matching variants needs: family, quantized or not, per-seed series. The untrained
    base's rows are kept apart (``untrained``): it is a level to measure training against, not a method."""

    def __init__(self, summary: pd.DataFrame, baseline: str, traits: dict, margins: dict | None = None):
        df = variant_columns(summary, traits)
        is_base = df["untrained"]
        self.df, self.untrained, self.baseline = df[~is_base], df[is_base], baseline
        self.margins = margins or {}

    def margin(self, metric: str) -> float:
        """The equivalence margin of a metric (evaluation.equivalence_margin); NaN where none is set."""
        return self.margins.get(metric, float("nan"))

    def datasets(self):
        for dataset, g in self.df.groupby("dataset", sort=True):
            yield dataset, g, *primary_metric(g["task"].iloc[0])

    @staticmethod
    def series(g: pd.DataFrame, method: str, column: str) -> pd.Series:
        return g[g["method"] == method].set_index("seed")[column]

    @staticmethod
    def variants(g: pd.DataFrame) -> pd.DataFrame:
        """One row per variant (the first seed's row: settings are the same for every seed)."""
        return g.drop_duplicates("method").sort_values("method")

    def reference(self, g: pd.DataFrame, family: str, adapter_params) -> str | None:
        """The full-precision variant of ``family`` with this many adapter parameters; the baseline first."""
        v = self.variants(g)
        match = v[(v["family"] == family) & (v["method_type"] == family) & (v["quantize"] == "none")
                  & np.isclose(v["adapter_params"].astype(float), float(adapter_params))]
        if match.empty:
            return None
        return self.baseline if self.baseline in set(match["method"]) else match["method"].iloc[0]


def training_findings(runs: Runs) -> list[str]:
    """Per dataset with an untrained base row: how far each trained variant moved the metric from it."""
    out = []
    for dataset, g, metric, higher in runs.datasets():
        base = runs.untrained[runs.untrained["dataset"] == dataset]
        if base.empty:
            continue
        level = float(base[metric].mean())
        parts = []
        for method, h in g.groupby("method", sort=True):
            values = h[metric]
            change = 100.0 * (values.mean() / level - 1)
            _, _, lo, hi = stats.t_interval(100.0 * (values / level - 1))
            parts.append(f"{method} {fmt_number(values.mean())}, {change:+.1f}%{ci_text(lo, hi)}")
        out.append(f"**{dataset}**: the untrained base scores {metric} {fmt_number(level)}; after training: "
                   + "; ".join(parts) + ".")
    return out or [f"{NOT_ENOUGH}: the config runs no untrained `base` entry (`base: {{}}` adds one)."]


def sparsity_findings(runs: Runs) -> list[str]:
    """Per sparse type: the adapter sparsity up to which the metric stays inside the dense reference's 95%
    interval over seeds, and the first at which it leaves it."""
    out = []
    for dataset, g, metric, higher in runs.datasets():
        v = runs.variants(g)
        sparse = v[v["prunes_adapter"]]
        for kind, group in sparse.groupby("method_type"):
            ref = runs.reference(g, "lora", group["adapter_params"].iloc[0])
            if ref is None:
                out.append(f"**{dataset}**, {kind}: {NOT_ENOUGH}: no full-precision LoRA variant with its "
                           f"{fmt_number(group['adapter_params'].iloc[0])} adapter parameters to compare against.")
                continue
            ref_values = runs.series(g, ref, metric)
            _, _, lo, hi = stats.t_interval(ref_values)
            if pd.isna(lo):
                out.append(f"**{dataset}**, {kind}: {NOT_ENOUGH}: {ref} ran one seed, so it has no interval.")
                continue
            points = sorted(((float(runs.series(g, m, "adapter_sparsity").mean()), m) for m in group["method"]))
            held, fell = [], None
            for sparsity, m in points:
                mean = float(runs.series(g, m, metric).mean())
                if (mean < lo) if higher else (mean > hi):
                    fell = (sparsity, m)
                    break
                held.append((sparsity, m))
            n = len(points)
            head = (f"**{dataset}**, {kind} ({n} sparsit{'y' if n == 1 else 'ies'}): {metric} of {ref}, the dense "
                    f"reference, is {_with_ci(ref_values)}.")
            if held:
                s, m = held[-1]
                head += (f" It stays inside that interval up to adapter sparsity {s:.2f} ({m}: "
                         f"{_with_ci(runs.series(g, m, metric))})")
                head += "; it" if fell else ", the highest tested: no fall beyond the interval was seen."
            else:
                head += " It"
            if fell:
                s, m = fell
                head += (f" leaves {'it at sparsity' if held else 'that interval already at the lowest sparsity tested,'} "
                         f"{s:.2f} ({m}: {_with_ci(runs.series(g, m, metric))}).")
            out.append(head)
    return out or [f"{NOT_ENOUGH}: the config runs no sparse_lora_* variant (configs/sweeps.yaml sweeps them)."]


def quantization_findings(runs: Runs) -> list[str]:
    """Each quantized variant against the same adapter on a full-precision base: the metric's change (paired
    by seed), the stored weights (exact bytes) and peak training memory (ratio per seed, with its interval)."""
    out = []
    for dataset, g, metric, _ in runs.datasets():
        v = runs.variants(g)
        for row in v[v["quantize"] != "none"].itertuples():
            ref = runs.reference(g, row.family, row.adapter_params)
            double = bool(getattr(row, "double_quant", False) == True)  # noqa: E712  (NaN and numpy bools)
            what = f"{_label(row)}, {row.quantize} base{' with double quantization' if double else ''}"
            if ref is None:
                out.append(f"**{dataset}**: {what}: {NOT_ENOUGH}: no full-precision {row.family} variant with "
                           f"{fmt_number(row.adapter_params)} adapter parameters.")
                continue
            diff, _, _ = _paired(runs.series(g, row.method, metric), runs.series(g, ref, metric))
            sentence = f"**{dataset}**: {what} against {ref}: {metric} {diff}"
            if "param_bytes" in g:
                ratio = float(runs.series(g, row.method, "param_bytes").iloc[0]
                              / runs.series(g, ref, "param_bytes").iloc[0])
                sentence += f"; stored weights {ratio:.2f}x (exact byte count)"
            differ = unlike(g[g["method"] == row.method], g[g["method"] == ref])
            if "memory kind" in differ:
                sentence += f"; memory not compared (unlike quantities: {differ['memory kind']})"
                train_ratio = pd.Series([float("nan")])
            else:
                a, b = runs.series(g, row.method, "peak_train_mem_mb"), runs.series(g, ref, "peak_train_mem_mb")
                seeds = sorted(set(a.index) & set(b.index))
                train_ratio = a.loc[seeds] / b.loc[seeds]
                sentence += f"; peak training memory ratio {_with_ci(train_ratio)}"
                for col, phase in (("peak_infer_mem_mb", "inference at the throughput batch"),
                                   ("peak_infer_batch1_mem_mb", "at batch 1")):
                    if col in g:  # measured once per (method, dataset) by the efficiency job
                        ratio = float(runs.series(g, row.method, col).iloc[0] / runs.series(g, ref, col).iloc[0])
                        sentence += f"; {phase} {ratio:.2f}x"
            if "device" in differ:
                sentence += f" (not like for like: devices {differ['device']})"
            checkpointed = bool(getattr(row, "gradient_checkpointing", False) == True)  # noqa: E712
            if train_ratio.mean() > 0.8 and not checkpointed:
                sentence += (" (the training peak is mostly activations, which a quantized base does not shrink; "
                             "training.gradient_checkpointing trades them for a second forward per layer)")
            if "merge_error_rel" in g and not pd.isna(row.merge_error_rel):
                sentence += (f"; merging would move the weights off the adapted ones by "
                             f"{_with_ci(runs.series(g, row.method, 'merge_error_rel'))} times the adapter's own "
                             "change (merge_error_rel; so it is deployed unmerged)")
            out.append(sentence + ".")
    return out or [f"{NOT_ENOUGH}: every variant runs on a full-precision base (set quantize: nf4, fp4 or int8)."]


def rank_findings(runs: Runs) -> list[str]:
    """HiRA against LoRA with the same number of adapter parameters (same rank): paired by seed."""
    out = []
    for dataset, g, metric, higher in runs.datasets():
        v = runs.variants(g)
        for row in v[(v["method_type"] == "hira") & (v["quantize"] == "none")].itertuples():
            ref = runs.reference(g, "lora", row.adapter_params)
            if ref is None:
                out.append(f"**{dataset}**: {row.method}: {NOT_ENOUGH}: no LoRA variant with its "
                           f"{fmt_number(row.adapter_params)} adapter parameters.")
                continue
            a, b = runs.series(g, row.method, metric), runs.series(g, ref, metric)
            diff, mean, p = _paired(a, b)
            verdict = _verdict(a, b, runs.margin(metric))
            if verdict == "differs":
                verdict = f"differs: HiRA {'better' if (mean > 0) == higher else 'worse'} at 0.05"
            out.append(f"**{dataset}**: {row.method} against {ref} at {fmt_number(row.adapter_params)} adapter parameters "
                       f"each: {metric} {diff}: {verdict}.")
    return out or [f"{NOT_ENOUGH}: no HiRA variant ran on a full-precision base."]


def frontier_findings(runs: Runs) -> list[str]:
    """The variants no other beats on both peak training memory and the metric (means over seeds)."""
    out = []
    for dataset, g, metric, higher in runs.datasets():
        kinds = sorted(distinct_values(g["memory_kind_train"])) if "memory_kind_train" in g else []
        if len(kinds) > 1:
            out.append(f"**{dataset}**: no frontier: the runs' memory is of unlike kinds ({', '.join(kinds)}).")
            continue
        means = g.groupby("method", as_index=False)[["peak_train_mem_mb", metric]].mean()
        if len(means) < 2:
            out.append(f"**{dataset}**: {NOT_ENOUGH}: one variant, no frontier.")
            continue
        means = means[stats.pareto_front(means, "peak_train_mem_mb", metric, higher)]
        parts = [f"{m} ({_with_ci(runs.series(g, m, 'peak_train_mem_mb'))} MB; {metric} "
                 f"{_with_ci(runs.series(g, m, metric))})" for m in means.sort_values("peak_train_mem_mb")["method"]]
        out.append(f"**{dataset}**: from least memory to best {metric}: " + "; ".join(parts) + ".")
    return out


CRITERIA = [  # (label, per-seed column, higher is better)
    ("least peak training memory", "peak_train_mem_mb", False),
    ("fastest training", "train_time_s", False),
    ("smallest artifact to ship", "adapter_size_mb", False),
]


def excels_findings(runs: Runs) -> list[str]:
    """Per dataset and criterion, the best variant and whether its lead over the runner-up holds (paired t)."""
    out = []
    for dataset, g, metric, higher in runs.datasets():
        parts = []
        for label, column, best_high in [(f"best {metric}", metric, higher), *CRITERIA]:
            if column not in g or g[column].isna().all():
                continue
            means = g.groupby("method")[column].mean().sort_values(ascending=not best_high)
            best = means.index[0]
            text = f"{label}: **{best}** {_with_ci(runs.series(g, best, column))}"
            if len(means) > 1:
                second = means.index[1]
                a, b = runs.series(g, best, column), runs.series(g, second, column)
                _, _, p = _paired(a, b)
                lead = ("a lead the seeds cannot test" if pd.isna(p) else
                        f"ahead of {second} (paired t p = {p:.2g}: {_verdict(a, b, runs.margin(column))})")
                text += f", {lead}"
            parts.append(text)
        if "throughput_per_s" in g and g["throughput_per_s"].notna().any():
            rounds = g.drop_duplicates("method").set_index("method")
            best = rounds["throughput_per_s"].idxmax()
            r = rounds.loc[best]
            parts.append(f"highest inference throughput: **{best}** {fmt_number(r['throughput_per_s'])}/s (95% CI over "
                         f"timing rounds {fmt_number(r.get('throughput_per_s_ci95_low'))} to "
                         f"{fmt_number(r.get('throughput_per_s_ci95_high'))})")
        out.append(f"- **{dataset}**: " + "; ".join(parts) + ".")
    return out


def convergence_limits(df: pd.DataFrame) -> list[str]:
    """Per dataset: which variants had not levelled off (lorabench.analysis.convergence), so a gap to them is read as
    what it may be, a difference in speed of learning."""
    if "convergence" not in df:
        return []
    out = []
    for dataset, g in df.groupby("dataset"):
        steps = f"{int(g['train_steps'].max())} optimizer steps"
        falling = sorted(m for m, h in g.groupby("method") if (h["convergence"] == STILL_FALLING).any())
        stuck = sorted(m for m, h in g.groupby("method") if (h["convergence"] == NO_PROGRESS).any())
        if stuck:
            out.append(f"**{dataset}** ({steps}): the training loss of {', '.join(stuck)} ended where it started in "
                       "at least one seed (see Convergence): those runs learned little, and their metric says "
                       "nothing about what the method can reach.")
        if (g["convergence"] == TOO_FEW).all():
            out.append(f"**{dataset}**: {steps} are too few to tell whether any method converged; its ranking may "
                       "rank only how fast methods start.")
        elif falling:
            out.append(f"**{dataset}** ({steps}): the training loss of {', '.join(falling)} was still falling "
                       f"steeply over the last {TAIL_FRACTION:.0%} of steps in at least one seed (see Convergence), "
                       "so a gap to them may close with more training: it is not shown to be a gap between methods.")
        unsure = sorted(m for m, h in g.groupby("method") if (h["convergence"].isin([TOO_SHORT, TOO_FEW])).any())
        if unsure and not (g["convergence"] == TOO_FEW).all():
            out.append(f"**{dataset}** ({steps}): whether the loss of {', '.join(unsure)} had levelled off cannot "
                       f"be told in at least one seed: over the last {TAIL_FRACTION:.0%} of steps its trend does "
                       f"not rule out a fall of {STEEP_DROP:.0%} or more (too short to judge), so a gap to them may "
                       "still close with more training.")
        elif not stuck and not falling and not (g["convergence"] == TOO_FEW).all():
            out.append(f"**{dataset}** ({steps}): every variant's loss had levelled off over its last "
                       f"{TAIL_FRACTION:.0%} of steps (its trend rules out a fall of {STEEP_DROP:.0%}); a method "
                       "that would overtake after much longer training is not ruled out.")
    return out


def limits(runs: Runs) -> list[str]:
    """What these runs cannot show, computed from what they are."""
    df = runs.df
    seeds = df.groupby(["dataset", "method"])["seed"].nunique()
    count = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()} to {seeds.max()}"
    out = [f"{count} seed{'s' if seeds.max() > 1 else ''} per variant: an interval from so few seeds is wide, and a "
           "difference inside it is not evidence of no difference."]
    out += convergence_limits(df)
    models = df.groupby("dataset")["model_repo"].first() if "model_repo" in df else pd.Series(dtype=str)
    if len(models):
        out.append("One model per task (" + ", ".join(f"{d}: {m}" for d, m in models.items())
                   + "): nothing here says how the ranking moves with model size.")
    return out


def discussion_lines(summary: pd.DataFrame, baseline: str, traits: dict, margins: dict | None = None) -> list[str]:
    """The report's Discussion; ``traits`` are the method types' (Method.traits), ``margins`` the equivalence
    margin per metric."""
    runs = Runs(summary, baseline, traits, margins)
    sections = [
        ("Did training move the metric? (against the untrained base)", training_findings(runs)),
        ("What does adapter sparsity cost?", sparsity_findings(runs)),
        ("What does quantization cost, and what does it save?", quantization_findings(runs)),
        ("High rank (HiRA) against low rank (LoRA) at the same parameter count", rank_findings(runs)),
        ("The memory-accuracy frontier", frontier_findings(runs)),
    ]
    lines = ["## Discussion", "",
             "The brief's questions, answered from these runs. Means over seeds with 95% t-intervals; comparisons "
             "are paired by seed. A variant is compared with the one that differs from it in a single respect.", ""]
    for title, sentences in sections:
        lines += [f"### {title}", "", *[f"- {s}" for s in sentences], ""]
    lines += ["### Which method wins where", "", *excels_findings(runs), ""]
    lines += ["### What these results do not show", "", *[f"- {s}" for s in limits(runs)], ""]
    return lines
