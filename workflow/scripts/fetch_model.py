from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.loading.models import fetch_model  # noqa: E402

m = snakemake.params.model
fetch_model(m["repo"], snakemake.params.snapshots, snakemake.output[0], m.get("gguf_file"))
