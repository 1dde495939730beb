from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.loading.data import tokenize_dataset  # noqa: E402

d = snakemake.params.dataset
tokenize_dataset(d, snakemake.input.model, snakemake.input.raw, d["subset_seed"], snakemake.output[0],
                 snakemake.wildcards.dataset)
