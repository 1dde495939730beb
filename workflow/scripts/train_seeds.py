from lorabench.io import log_to

log_to(snakemake.log[0])
from lorabench.execution.warm import call  # noqa: E402

run = snakemake.params.run
call(
    "lorabench.execution.seed_chunk:train_seeds",
    seeds=[int(s) for s in snakemake.params.seeds], checkpoint_dirs=snakemake.params.checkpoint_dirs,
    outputs={role: list(getattr(snakemake.output, role)) for role in ("model", "metrics", "evaluation", "predictions")},
    model_dir=snakemake.input.model, tokenized_dir=snakemake.input.tokenized,
    dataset_name=snakemake.wildcards.dataset, dataset=run["dataset"], model_cfg=run["model_cfg"],
    method_name=snakemake.wildcards.method, method_params=run["method_params"], training=run["training"],
    evaluation=run["evaluation"], threads=snakemake.threads, device=run["device"], precision=run["precision"],
    deterministic=run.get("deterministic", False), cost_per_device_hour=snakemake.params.cost_per_device_hour,
    method_inputs={role: path for role, path in snakemake.input.items() if role not in ("model", "tokenized")},
)
