# Gather every run into results/summary.csv and draw the figures (CPU only, cheap).
FIGURES = ["metric_vs_trainable_params"]


rule aggregate:
    input:
        train=all_runs(f"{RUN}/train_metrics.json"),
        evaluation=all_runs(f"{RUN}/eval_metrics.json"),
    output:
        summary="results/summary.csv",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    script:
        "../scripts/aggregate.py"


rule plot:
    input:
        summary="results/summary.csv",
    output:
        png="results/figures/metric_vs_trainable_params.png",
        svg="results/figures/metric_vs_trainable_params.svg",
    log:
        "results/logs/plot.log",
    benchmark:
        "results/benchmarks/plot.tsv"
    script:
        "../scripts/plot.py"
