"""Slices of a validated config, as each job and check reads them: a method's settings on a model, a dataset's
entry and training settings, and the canonical key order that keeps Snakemake's params stable."""

from __future__ import annotations

import math


def method_params_on(config: dict, method: str, model: str) -> dict:
    """A method's settings on ``model``'s datasets, as its jobs see them: the entry with ``by_model.<model>``
    merged over it, without ``datasets`` and ``by_model`` (where it runs and the overrides say nothing more)."""
    params = config["methods"][method]
    merged = {**params, **params.get("by_model", {}).get(model, {})}
    return {k: v for k, v in merged.items() if k not in ("datasets", "by_model")}


def setting_key(config: dict, method: str, model: str, key: str) -> str:
    """The config key a setting of ``method`` on ``model`` comes from: its by_model override, or the entry."""
    if key in config["methods"][method].get("by_model", {}).get(model, {}):
        return f"methods.{method}.by_model.{model}.{key}"
    return f"methods.{method}.{key}"


def method_entries(config: dict):
    """(config key, method name, settings) of every method entry and of each of its per-model merges, for the
    checks that hold for any settings."""
    for name, params in config["methods"].items():
        yield f"methods.{name}", name, {k: v for k, v in params.items() if k != "by_model"}
        for model in params.get("by_model", {}):
            yield f"methods.{name}.by_model.{model}", name, method_params_on(config, name, model)


#: Dataset keys that say how runs train and are judged on the data, not what the data are: changing them
#: retokenizes nothing (a target reruns only the analysis; curve_points reaches the runs through evaluation).
NOT_DATA_KEYS = ("training", "target", "curve_points")


def dataset_entry(config: dict, dataset: str) -> dict:
    """A dataset's entry without its training overrides, target and curve points: what its data and their
    tokens depend on (changing how runs train on it, or what they are judged against, retokenizes nothing)."""
    return {k: v for k, v in config["datasets"][dataset].items() if k not in NOT_DATA_KEYS}


def curve_points(config: dict, dataset: str) -> int:
    """Held-out curve points of runs on ``dataset``: its own curve_points, else evaluation.curve_points; 0
    where the dataset holds out no slice to score them on."""
    ds = config["datasets"][dataset]
    if not ds.get("holdout_size"):
        return 0
    own = ds.get("curve_points")
    return own if own is not None else config["evaluation"].get("curve_points", 0)


def optimizer_steps(n_examples: int, training: dict) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) of a run on ``n_examples`` training examples under
    ``training`` (a training section: batch_size, grad_accum_steps, epochs, max_steps). The trainer plans its
    loop with it and validation checks the curve points against it: one count for both."""
    micro = math.ceil(n_examples / training["batch_size"])
    per_epoch = math.ceil(micro / training["grad_accum_steps"])
    total = per_epoch * training["epochs"]
    if training.get("max_steps"):
        total = min(total, training["max_steps"])
    return per_epoch, total


def dataset_training(config: dict, dataset: str) -> dict:
    """The training settings of runs on ``dataset``: the top-level section with the dataset's overrides."""
    return {**config["training"], **config["datasets"][dataset].get("training", {})}


def sorted_keys(value):
    """The same config with every mapping's keys in sorted order, recursively (lists keep their order).

    Snakemake compares a job's params with the recorded ones including the order of dict keys, so a config
    file re-saved with its keys in another order would rerun every job; jobs read this canonical form."""
    if isinstance(value, dict):
        return {k: sorted_keys(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [sorted_keys(v) for v in value]
    return value


def seed_chunks(seeds: list, seeds_per_job: int, local: bool = True) -> list[list]:
    """The seeds each training job of a (method, dataset) trains: chunks of ``seeds_per_job`` in config order, on
    a local run; one seed per job on a cluster (``local`` False). Appending seeds adds chunks and leaves the
    finished ones alone, as long as the last chunk was full."""
    size = seeds_per_job if local else 1
    return [list(seeds[i:i + size]) for i in range(0, len(seeds), size)]
