from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.execution.warm import call  # noqa: E402

run = snakemake.params.run
call(
    "lorabench.execution.jobs:train_run",
    model_dir=snakemake.input.model, tokenized_dir=snakemake.input.tokenized,
    out_model_dir=snakemake.output.model, out_metrics=snakemake.output.metrics,
    out_eval_metrics=snakemake.output.evaluation, out_predictions=snakemake.output.predictions,
    dataset_name=snakemake.wildcards.dataset, dataset=run["dataset"], model_cfg=run["model_cfg"],
    method_name=snakemake.wildcards.method, method_params=run["method_params"], training=run["training"],
    evaluation=run["evaluation"], seed=int(snakemake.wildcards.seed), threads=snakemake.threads,
    device=run["device"], precision=run["precision"], deterministic=run.get("deterministic", False),
    cost_per_device_hour=snakemake.params.cost_per_device_hour,
    checkpoint_dir=snakemake.params.checkpoint_dir,
    method_inputs={role: path for role, path in snakemake.input.items() if role not in ("model", "tokenized")},
)
