# Shared helpers: config validation (before any job runs), wildcard constraints, per-job config slices.
import json
import re
import sys
from types import SimpleNamespace
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the package, also when not pip-installed

from lorabench.config import (ConfigError, curve_points, dataset_entry, dataset_training, method_params_on,
                              seed_chunks, sorted_keys)
from lorabench.config.tracking import export_trackers
from lorabench.analysis.figures import figures_for
from lorabench.methods import architecture_params, deployed_graph, method_class, type_traits
from lorabench.methods.checks import check_config
from lorabench.methods.sparselora.predictors import PREDICTOR_CONTENTS

try:
    check_config(config)
except ConfigError as err:
    # A clear one-line message and no traceback: the error names the key and what is allowed.
    print(f"lorabench: invalid configuration: {err}", file=sys.stderr)
    sys.exit(2)
export_trackers(config["tracking"])  # to the training jobs, outside their params (config/tracking.py)
if workflow.is_main_process:  # a cluster profile's resources: refused before anything is submitted
    from lorabench.config.cluster import check_cluster_resources

    _res = workflow.resource_settings
    try:  # .raw: the value as the profile wrote it (string resources are evaluated only per job)
        check_cluster_resources({k: v.raw for k, v in (_res.default_resources or {}).items()},
                                {r: {k: v.raw for k, v in res.items()} for r, res in _res.overwrite_resources.items()})
    except ConfigError as err:
        print(f"lorabench: invalid cluster profile: {err}", file=sys.stderr)
        sys.exit(2)
# Key order carries no meaning: reordering a config file must not rerun anything (params compare in order).
_canonical = sorted_keys(dict(config))
config.clear()
config.update(_canonical)

DATASETS = list(config["datasets"])
METHODS = list(config["methods"])
SEEDS = list(config["seeds"])
THREADS = config["threads"]
RUN = "results/runs/{dataset}/{method}/seed{seed}"
# seeds_per_job > 1: one process trains a (method, dataset)'s seeds in chunks of that many (workflow/rules/
# train.smk), on a local run only. A cluster executor, and each job it submits, keeps one job per seed, and the
# main process and the jobs must agree on the rules: the submitted jobs run in REMOTE mode.
SEED_CHUNKS = seed_chunks(SEEDS, config.get("seeds_per_job", 1), workflow.local_exec and not workflow.remote_exec)

# warm_process (a local run): the torch jobs are forked from one process that imported the libraries once
# (lorabench/execution/warm.py); without it each job imports them itself. Not a param: it reruns nothing.
if config.get("warm_process", True) and workflow.local_exec and not workflow.remote_exec:

    onstart:
        from lorabench.execution.warm import start

        start(".snakemake/lorabench-warm.log")

wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(map(re.escape, METHODS)),
    model="|".join(config["models"]),
    seed=r"\d+",
    rank=r"\d+",
    kind="calibrated|svd",


# What the analysis jobs (torch-free) are told of the configured method types, and the figures they draw.
METHOD_TRAITS = type_traits(sorted({params["type"] for params in config["methods"].values()}))
FIGURES = figures_for(f for params in config["methods"].values()
                      for f in method_class(params["type"]).figures_of(params))


def model_of(dataset):
    return config["datasets"][dataset]["model"]


def dataset_source(dataset):
    """What fetching a dataset depends on: where it comes from and which splits, not its sizes."""
    return {k: config["datasets"][dataset].get(k) for k in ("repo", "config_name", "train_split", "eval_split")}


def dataset_slice(dataset):
    """What tokenization depends on: the dataset's entry plus the fixed subset seed."""
    return {**dataset_entry(config, dataset), "subset_seed": config["training"]["subset_seed"]}


# Evaluation settings a training job uses (it evaluates its model in memory, and its held-out curve: the
# dataset's curve points, resolved), and those the efficiency job uses (timing): changing one kind reruns only
# the jobs that read it.
EVAL_KEYS_OF_TRAIN = ("batch_size", "mask_seed")
EVAL_KEYS_OF_EFFICIENCY = ("latency_examples", "timing_repeats", "throughput_batch_size", "throughput_min_time_s")


def device_params():
    """Where and how a torch job computes. ``deterministic`` only when on: a results folder from before the
    setting existed keeps its runs."""
    return {"device": config["device"], "precision": config["precision"],
            **({"deterministic": True} if config["deterministic"] else {})}


def method_inputs(wildcards):
    """Files a method reads besides the model and the data, by role (SparseLoRA: its channel predictor)."""
    params = run_settings(wildcards.method, wildcards.dataset)
    if getattr(method_class(params["type"]), "uses_predictor", False):
        folder = f"resources/predictors/{wildcards.dataset}/{model_of(wildcards.dataset)}"
        return {"predictor": f"{folder}/{params['predictor']}_rank{params['predictor_rank']}.safetensors"}
    return {}


def run_settings(method, dataset):
    """A method's settings as its jobs on `dataset` see them: its `by_model` settings for the dataset's model
    merged in; without `datasets`, which says where it runs, not how (adding a dataset to the list reruns nothing
    that already ran), and without the other models' settings (changing those reruns only their runs)."""
    return method_params_on(config, method, model_of(dataset))


def checkpoint_dir(dataset, method, seed):
    """Where a run keeps its checkpoint. Not an output: Snakemake deletes a failed job's outputs, but a killed run
    must find its checkpoint."""
    return f"results/checkpoints/{dataset}/{method}/seed{seed}"


def run_params(wildcards):
    """What one run depends on, and nothing more: other methods' settings do not rerun it."""
    ds = dataset_entry(config, wildcards.dataset)
    return {
        "dataset": ds,
        "model_cfg": config["models"][ds["model"]],
        "method_params": run_settings(wildcards.method, wildcards.dataset),
        "training": dataset_training(config, wildcards.dataset),
        "evaluation": {**{k: config["evaluation"][k] for k in EVAL_KEYS_OF_TRAIN},
                       "curve_points": curve_points(config, wildcards.dataset)},
        **device_params(),
    }


def efficiency_params(wildcards):
    """What latency, throughput, size, inference memory and FLOPs depend on: the data, the model's shape and
    the precision; not the seed, the learning rate or the training schedule."""
    ds = dataset_entry(config, wildcards.dataset)
    return {
        "dataset": ds,
        "model_cfg": config["models"][ds["model"]],
        "method_params": architecture_params(wildcards.method, run_settings(wildcards.method, wildcards.dataset)),
        "evaluation": {k: config["evaluation"][k] for k in EVAL_KEYS_OF_EFFICIENCY},
        **device_params(),
    }


# The (dataset, method) pairs of the config: a method's `datasets` setting restricts it (the untrained base on
# language modelling only); without it, a method covers every dataset.
PAIRS = [(d, m) for d in DATASETS for m in METHODS if d in config["methods"][m].get("datasets", DATASETS)]


def _measured_as(dataset, method):
    """What an efficiency job measures, as a comparable key: its params, with the method named by the graph it
    deploys (methods/__init__.py, deployed_graph)."""
    params = efficiency_params(SimpleNamespace(dataset=dataset, method=method))
    params["method_params"] = deployed_graph(method, params["method_params"])
    return json.dumps(params, sort_keys=True, default=str)


# Variants that deploy the same model (an lr_grid's rates; LoRA's pruned variants and SparseLoRA, which deploy a
# LoRA adapter of LoRA's shapes) would measure the same thing: the first of them (in config order) measures it
# for all of them, and their summary rows say which (efficiency_measured_on).
_first_of = {}
EFFICIENCY_OWNER = {(d, m): _first_of.setdefault(_measured_as(d, m), m) for d, m in PAIRS}


def efficiency_file(dataset, method):
    return f"results/efficiency/{dataset}/{EFFICIENCY_OWNER[(dataset, method)]}.json"


def all_runs(pattern):
    """``pattern`` for every (dataset, method, seed) of the config."""
    return [pattern.format(dataset=d, method=m, seed=s) for d, m in PAIRS for s in SEEDS]


def _config_name():
    """The config file this run reads, as run-times.yaml names it (relative to the repository)."""
    given = workflow.overwrite_configfiles
    if not given:
        return "config.yaml"
    path = Path(given[-1]).resolve()
    try:
        return str(path.relative_to(Path(workflow.basedir).resolve()))
    except ValueError:
        return str(path)


if workflow.is_main_process:  # not in each cluster job's own Snakemake: once, before the first job
    from lorabench.runtime.plan import plan_lines

    _other = {efficiency_file(d, m) for d, m in PAIRS}
    _other |= {f for d, m in PAIRS for f in method_inputs(SimpleNamespace(dataset=d, method=m)).values()}
    print("\n".join(plan_lines(config, _config_name(), len(PAIRS) * len(SEEDS), len(_other),
                               len(PAIRS) * len(SEED_CHUNKS))), file=sys.stderr)


def torch_resources(kind):
    """mem_mb / runtime (minutes) for torch jobs, sized for the default CPU run; profiles may override."""
    return {"train": dict(mem_mb=8000, runtime=60), "efficiency": dict(mem_mb=6000, runtime=30)}[kind]
