from lorabench.utils import log_to

log_to(snakemake.log[0])
from lorabench.data import tokenize_dataset  # noqa: E402

d = snakemake.params.dataset
tokenize_dataset(d, snakemake.input.model, snakemake.input.raw, d["subset_seed"], snakemake.output[0],
                 snakemake.wildcards.dataset)
