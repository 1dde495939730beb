from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.analysis.report import write_report  # noqa: E402

write_report(snakemake.input.summary, snakemake.params.runs_dir, snakemake.params.baseline,
             snakemake.output.by_method, snakemake.output.significance, snakemake.output.report_md,
             snakemake.params.traits, snakemake.params.figures, margins=snakemake.params.margins)
