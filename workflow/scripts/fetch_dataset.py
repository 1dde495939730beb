from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.execution.warm import call  # noqa: E402

d = snakemake.params.dataset
call("lorabench.loading.data:fetch_dataset", repo=d["repo"], config_name=d.get("config_name"),
     splits=[d["train_split"], d["eval_split"]], snapshots=snakemake.params.snapshots, out_dir=snakemake.output[0])
