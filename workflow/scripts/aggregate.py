from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.analysis.aggregate import write_summary  # noqa: E402

write_summary(snakemake.input.train, snakemake.input.evaluation, snakemake.params.efficiency_of,
              snakemake.output.summary, snakemake.params.targets)
