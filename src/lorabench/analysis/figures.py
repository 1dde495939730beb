"""The names of the figures a config draws, apart from the drawing (plots.py, which imports plotnine): the
Snakefile reads them while it builds the job graph, where every import is paid once more per invocation."""

from __future__ import annotations

from typing import Iterable

#: Figures drawn for every config.
FIGURES = ["loss_curves", "heldout_vs_time", "heldout_vs_flops", "metric_vs_trainable_params", "throughput_vs_metric",
           "train_time", "memory", "pareto_memory_metric"]


#: Figures drawn only where a configured method asks for them (Method.figures_of), in the report's order.
OPTIONAL_FIGURES = ["adalora_ranks", "sparselora_speed", "metric_vs_sparsity", "bits"]


def figures_for(asked: Iterable[str]) -> list[str]:
    """Every figure of a config: the common ones, then those its methods ask for (``asked``)."""
    asked = set(asked)
    unknown = asked - set(OPTIONAL_FIGURES)
    if unknown:
        raise ValueError(f"no figure named {', '.join(sorted(unknown))}; drawn: {', '.join(OPTIONAL_FIGURES)}")
    return FIGURES + [f for f in OPTIONAL_FIGURES if f in asked]
