from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.methods.sparselora.predictors import save_predictors  # noqa: E402

w = snakemake.wildcards
save_predictors(snakemake.input.model, int(w.rank), w.kind, snakemake.output[0], snakemake.input.tokenized)
