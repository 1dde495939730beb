from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.execution.warm import call  # noqa: E402

run = snakemake.params.run
call(
    "lorabench.execution.jobs:efficiency_run",
    model_dir=snakemake.input.model, tokenized_dir=snakemake.input.tokenized, out_json=snakemake.output[0],
    dataset=run["dataset"], model_cfg=run["model_cfg"], method_name=snakemake.wildcards.method,
    method_params=run["method_params"], evaluation=run["evaluation"], threads=snakemake.threads,
    device=run["device"], precision=run["precision"], deterministic=run.get("deterministic", False),
)
