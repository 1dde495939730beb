from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.execution.warm import call  # noqa: E402

m = snakemake.params.model
call("lorabench.loading.models:fetch_model", repo=m["repo"], snapshots=snakemake.params.snapshots,
     out_dir=snakemake.output[0], gguf_file=m.get("gguf_file"))
