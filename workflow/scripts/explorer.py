from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.analysis.explorer import write_explorer  # noqa: E402

write_explorer(snakemake.input.summary, snakemake.input.significance, snakemake.output.html,
               snakemake.params.baseline, snakemake.params.traits, snakemake.params.settings)
