from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.execution.warm import call  # noqa: E402

w = snakemake.wildcards
call("lorabench.methods.sparselora.predictors:save_predictors", model_dir=snakemake.input.model, rank=int(w.rank),
     kind=w.kind, out_file=snakemake.output[0], tokenized_dir=snakemake.input.tokenized)
