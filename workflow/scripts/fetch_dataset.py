from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.loading.data import fetch_dataset  # noqa: E402

d = snakemake.params.dataset
fetch_dataset(d["repo"], d.get("config_name"), [d["train_split"], d["eval_split"]],
              snakemake.params.snapshots, snakemake.output[0])
