from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.execution.warm import call  # noqa: E402

d = snakemake.params.dataset
call("lorabench.loading.data:tokenize_dataset", ds=d, model_dir=snakemake.input.model, raw_dir=snakemake.input.raw,
     subset_seed=d["subset_seed"], out_dir=snakemake.output[0], name=snakemake.wildcards.dataset)
