from lorabench.utils import log_to

log_to(snakemake.log[0])
from lorabench.run import evaluate_run  # noqa: E402

run = snakemake.params.run
evaluate_run(
    model_dir=snakemake.input.model, tokenized_dir=snakemake.input.tokenized, trained_dir=snakemake.input.trained,
    out_metrics=snakemake.output.metrics, out_predictions=snakemake.output.predictions,
    dataset=run["dataset"], model_cfg=run["model_cfg"], method_name=snakemake.wildcards.method,
    method_params=run["method_params"], training=run["training"], evaluation=snakemake.params.evaluation,
    threads=snakemake.threads, device=run["device"],
)
