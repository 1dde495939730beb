"""The trackers a config may name and what each needs installed, torch-free: the config check refuses a
tracker that is not installed before the workflow schedules any job. The tracked runs themselves are written
by lorabench.execution.tracking."""

from __future__ import annotations

import importlib.util
import os

INSTALL = "pip install -e '.[tracking]'"

# name in the config -> (module the job imports, the PyPI requirement that provides it)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "wandb": ("wandb", "wandb"),
}


def not_installed(names) -> list[str]:
    """The trackers among ``names`` whose package cannot be imported here."""
    return [name for name in names if importlib.util.find_spec(TRACKERS[name][0]) is None]


# The trackers reach the training jobs through the environment, not a rule's params: params are what a run
# depends on (Snakemake reruns a job whose params change), and turning tracking on or off must rerun nothing.
# The workflow sets it from the config in every Snakemake process, on a cluster's nodes too; a job's script
# inherits it.
ENV = "LORABENCH_TRACKING"


def export_trackers(names) -> None:
    os.environ[ENV] = ",".join(names)


def exported_trackers() -> list[str]:
    return [name for name in os.environ.get(ENV, "").split(",") if name]
