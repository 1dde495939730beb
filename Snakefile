# lorabench: fine-tune with parameter-efficient methods and measure what each costs and buys.
#   snakemake --cores 2                               default benchmark (config.yaml)
#   snakemake --cores 2 --configfile configs/smoke.yaml
# A --configfile replaces config.yaml entirely (no silent merge of method lists); --config KEY=VALUE
# overrides single keys on top of whichever file is used.
import os

if not workflow.overwrite_configfiles:
    configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/efficiency.smk"
include: "workflow/rules/aggregate.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        "results/summary.csv",
        "results/summary_by_method.csv",
        "results/significance.csv",
        "results/report.md",
        "results/explorer.html",
        expand("results/figures/{figure}.{ext}", figure=FIGURES, ext=["png", "svg"]),
        ["results/lr_choice.csv"] if config.get("lr_grid") else [],
    default_target: True
