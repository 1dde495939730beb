from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.analysis.plots import draw_all  # noqa: E402

draw_all(snakemake.input.summary, snakemake.params.out_dir, snakemake.input.train, snakemake.params.baseline,
         snakemake.params.traits, snakemake.params.figures)
