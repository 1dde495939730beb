"""The whole config check the workflow runs before any job: the config's own validation, then what only the
models and the registered methods know.

``lorabench.config.validate_config`` checks the schema, fills defaults and checks cross-references without
torch. Here every method entry, merged for each configured model (``by_model``), is handed to its registered
type: ``Method.check_settings`` against the model's shape (read from the snapshot, no weights loaded) and
``Method.precision_conflict`` against every precision the config can resolve to. This module asks each type;
it never names one. Errors name the config key: the entry's, or its ``by_model`` override's where that set it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lorabench.config import ConfigError, validate_config
from lorabench.config.views import method_entries, method_params_on, setting_key
from lorabench.loading.models import mean_pooling_refusal
from lorabench.loading.shapes import model_shape
from lorabench.methods.base import METHODS, SettingError


def check_config(config: dict) -> dict:
    """Validate ``config`` in place (lorabench.config.validate_config), then check it against the registered
    methods and the models; raise ConfigError naming the key. Returns the config, defaults filled."""
    validate_config(config)
    for name, params in config["methods"].items():
        if params["type"] not in METHODS:  # a schema entry without a registered class
            raise ConfigError(f"config key 'methods.{name}': method type '{params['type']}' is not registered; "
                              f"registered: {', '.join(sorted(METHODS))}")
    _check_pooling(config)
    _check_precision(config)
    _check_settings(config)
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """A config file with ``overrides`` on top, checked as the workflow checks it."""
    with open(path) as fh:
        config = yaml.safe_load(fh)
    config.update(overrides or {})
    return check_config(config)


def _check_pooling(config: dict) -> None:
    """Mean pooling replaces a [CLS] pooler module: refused for an architecture without one (read from the
    snapshot's config; without a snapshot the load refuses it with the same message)."""
    for name, model in config["models"].items():
        if model["pooling"] != "mean":
            continue
        shape = model_shape(config["snapshots"], model)
        refusal = mean_pooling_refusal(shape.model_type) if shape else None
        if refusal:
            raise ConfigError(f"config key 'models.{name}.pooling': {refusal}")


def _check_precision(config: dict) -> None:
    """Every method must be able to run in the configured precision ('auto' may become bf16, fp16 or fp32:
    runtime/precision.py)."""
    requested = config["precision"]
    gives = {"bf16": "on hardware with native bf16", "fp16": "on GPUs without native bf16", "fp32": "on CPUs "
             "without native bf16"}
    for precision in (["bf16", "fp16", "fp32"] if requested == "auto" else [requested]):
        for key, name, params in method_entries(config):
            why = METHODS[params["type"]].precision_conflict(params, precision)
            if why:
                via = f" ('auto' gives {precision} {gives[precision]})" if requested == "auto" else ""
                raise ConfigError(f"config key '{key}': method '{name}' cannot run in precision "
                                  f"'{precision}'{via}: {why}")


def _check_settings(config: dict) -> None:
    """Each entry's settings on each model, by its type (ranks against layer widths, layer indices, ...)."""
    for model_name, model in config["models"].items():
        shape = model_shape(config["snapshots"], model)
        datasets = [d for d, ds in config["datasets"].items() if ds["model"] == model_name]
        where = f"model '{model_name}'" + (f" of dataset {', '.join(datasets)}" if datasets else "")
        for name, entry in config["methods"].items():
            params = method_params_on(config, name, model_name)
            try:
                METHODS[entry["type"]].check_settings(params, shape)
            except SettingError as err:
                key = setting_key(config, name, model_name, err.key) if err.key else f"methods.{name}"
                raise ConfigError(f"config key '{key}': {err.message} ({where})") from None
