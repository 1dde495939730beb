# Gather every run into tables, statistics, figures and the report (CPU only, cheap). These jobs import no
# torch: what they need to know of each method type (METHOD_TRAITS, FIGURES: common.smk) comes as params.


rule aggregate:
    input:
        train=all_runs(f"{RUN}/train_metrics.json"),
        evaluation=all_runs(f"{RUN}/eval_metrics.json"),
        efficiency=sorted({efficiency_file(d, m) for d, m in PAIRS}),
    output:
        summary=report("results/summary.csv", caption="../report/summary.rst", category="Tables"),
    params:
        efficiency_of={f"{d}/{m}": efficiency_file(d, m) for d, m in PAIRS},
        targets={d: ds["target"]["value"] for d, ds in config["datasets"].items() if ds.get("target")},
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        summary="results/summary.csv",
        predictions=all_runs(f"{RUN}/predictions.csv"),
    output:
        by_method=report("results/summary_by_method.csv", caption="../report/summary_by_method.rst", category="Tables"),
        significance=report("results/significance.csv", caption="../report/significance.rst", category="Tables"),
        report_md="results/report.md",
    params:
        baseline=config["baseline_method"],
        margins=config["evaluation"]["equivalence_margin"],
        runs_dir="results/runs",
        traits=METHOD_TRAITS,
        figures=FIGURES,
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    script:
        "../scripts/report.py"


rule plot:
    input:
        summary="results/summary.csv",
        train=all_runs(f"{RUN}/train_metrics.json"),
    output:
        **{f"{f}_png": report(f"results/figures/{f}.png", caption=f"../report/{f}.rst", category="Figures")
           for f in FIGURES},
        **{f"{f}_svg": f"results/figures/{f}.svg" for f in FIGURES},
    params:
        out_dir="results/figures",
        baseline=config["baseline_method"],
        traits=METHOD_TRAITS,
        figures=FIGURES,
    log:
        "results/logs/plot.log",
    benchmark:
        "results/benchmarks/plot.tsv"
    script:
        "../scripts/plot.py"


# The summary as one interactive page that opens from disk (Bokeh, inline): any two metrics, the frontier.
rule explorer:
    input:
        summary="results/summary.csv",
        significance="results/significance.csv",
    output:
        html=report("results/explorer.html", caption="../report/explorer.rst", category="Explore"),
    params:
        baseline=config["baseline_method"],
        traits=METHOD_TRAITS,
        settings=config["methods"],  # the page shows each entry's settings (explorer_rows picks them)
    log:
        "results/logs/explorer.log",
    benchmark:
        "results/benchmarks/explorer.tsv"
    script:
        "../scripts/explorer.py"


# A learning-rate sweep (lr_grid): the held-out metric of every rate, and the rate chosen per dataset.
rule lr_choice:
    input:
        summary="results/summary.csv",
    output:
        table=report("results/lr_choice.csv", caption="../report/lr_choice.rst", category="Tables"),
    params:
        lr_grid=config.get("lr_grid") or {},
    log:
        "results/logs/lr_choice.log",
    benchmark:
        "results/benchmarks/lr_choice.tsv"
    script:
        "../scripts/lr_choice.py"
