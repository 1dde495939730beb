# Shared helpers: config validation (before any job runs), wildcard constraints, per-job config slices.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the package, also when not pip-installed

from lorabench.config import ConfigError, validate_config
from lorabench.methods import architecture_params

try:
    validate_config(config)
except ConfigError as err:
    # A clear one-line message and no traceback: the error names the key and what is allowed.
    print(f"lorabench: invalid configuration: {err}", file=sys.stderr)
    sys.exit(2)

DATASETS = list(config["datasets"])
METHODS = list(config["methods"])
SEEDS = list(config["seeds"])
THREADS = config["threads"]
RUN = "results/runs/{dataset}/{method}/seed{seed}"

wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    model="|".join(config["models"]),
    seed=r"\d+",


def model_of(dataset):
    return config["datasets"][dataset]["model"]


def dataset_slice(dataset):
    """What tokenization depends on: the dataset's own entry plus the fixed subset seed."""
    return {**config["datasets"][dataset], "subset_seed": config["training"]["subset_seed"]}


def run_params(wildcards):
    """What one run depends on, and nothing more: other methods' settings do not rerun it."""
    ds = config["datasets"][wildcards.dataset]
    return {
        "dataset": ds,
        "model_cfg": config["models"][ds["model"]],
        "method_params": config["methods"][wildcards.method],
        "training": config["training"],
        "device": config["device"],
    }


def flops_params(wildcards):
    """What a FLOPs count depends on: the data and the model's shape, not lr or the training schedule."""
    ds = config["datasets"][wildcards.dataset]
    return {
        "dataset": ds,
        "model_cfg": config["models"][ds["model"]],
        "method_params": architecture_params(wildcards.method, config["methods"][wildcards.method]),
    }


def all_runs(pattern):
    return expand(pattern, dataset=DATASETS, method=METHODS, seed=SEEDS)


def torch_resources(kind):
    """mem_mb / runtime (minutes) for torch jobs, sized for the default CPU run; profiles may override."""
    return {"train": dict(mem_mb=8000, runtime=60), "evaluate": dict(mem_mb=6000, runtime=30)}[kind]
