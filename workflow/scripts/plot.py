from lorabench.utils import log_to

log_to(snakemake.log[0])
from lorabench.plots import draw_all  # noqa: E402

draw_all(snakemake.input.summary, snakemake.params.out_dir, snakemake.input.train, snakemake.params.baseline)
