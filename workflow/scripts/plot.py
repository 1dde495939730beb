from lorabench.utils import log_to

log_to(snakemake.log[0])
from lorabench.plots import metric_vs_trainable_params  # noqa: E402

metric_vs_trainable_params(snakemake.input.summary, snakemake.output.png, snakemake.output.svg)
