"""Config validation without torch: the schema, its defaults filled in, and the cross-references between
config keys, with messages that name the key at fault, what was given and what is allowed.

What only a method or a model knows is checked on top of this by lorabench.methods.checks.check_config, the
check the workflow runs before any job."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema

from lorabench.config.schema import load_schema, method_defaults, method_settings
from lorabench.config.tracking import INSTALL, TRACKERS, not_installed
from lorabench.config.views import curve_points, dataset_training, optimizer_steps
from lorabench.io import snapshot_path


class ConfigError(ValueError):
    """A config value is wrong; the message names the key, what was given and what is allowed."""


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _explain(error: jsonschema.ValidationError, prefix: tuple = ()) -> str:
    """One line naming the key (``prefix`` + the error's path) and what is allowed."""
    key = _key_path([*prefix, *error.absolute_path])
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" or error.validator == "unevaluatedProperties":
        allowed = sorted(schema.get("properties", {})) if isinstance(schema.get("properties"), dict) else []
        extra = error.message
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"config key '{key}': {extra}{hint}"
    if error.validator == "propertyNames":
        allowed = schema.get("propertyNames", {}).get("enum", [])
        return f"config key '{key}': {error.message}; allowed: {', '.join(map(str, allowed))}"
    desc = schema.get("description")
    msg = f"config key '{key}': {error.message}"
    if desc:
        msg += f" ({desc.strip()})"
    return msg


def _validate_methods(config: dict, schema: dict) -> None:
    """Each ``methods`` entry against its type's settings ($defs/method_types), errors naming the entry's key."""
    types = schema["$defs"]["method_types"]
    for name, params in config["methods"].items():
        kind = params.get("type", name)
        if kind not in types:
            key, why = ((f"methods.{name}.type", "") if "type" in params
                        else (f"methods.{name}", " (without 'type', the key is the type; give the entry a 'type')"))
            raise ConfigError(f"config key '{key}': no method type '{kind}'{why}; registered: {', '.join(types)}")
        entry = {k: v for k, v in params.items() if k != "type"}
        _check_method_settings(schema, kind, entry, ("methods", name))
        for model, override in entry.get("by_model", {}).items():
            _check_by_model_keys(config, name, model, override)
            merged = {**{k: v for k, v in entry.items() if k != "by_model"}, **override}
            _check_method_settings(schema, kind, merged, ("methods", name, "by_model", model))


#: What a ``by_model`` override cannot change: what the entry is, where it runs, and the overrides themselves.
ENTRY_ONLY_KEYS = ("type", "datasets", "by_model")


def _check_method_settings(schema: dict, kind: str, entry: dict, path: tuple) -> None:
    """One method entry (or an entry with a by_model override merged in) against its type; errors name the key
    under ``path``."""
    validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/method_types/{kind}"})
    errors = list(validator.iter_errors(entry))
    if errors:
        # A failing allOf part loses its annotations, so every key it holds also shows as unevaluated: the
        # failing value is the error to report.
        errors = [e for e in errors if e.validator != "unevaluatedProperties"] or errors
        best = jsonschema.exceptions.best_match(errors)
        message = _explain(best, path)  # the entry's key, not the type's definition
        if best.validator == "unevaluatedProperties":
            allowed = sorted(method_settings(schema, schema["$defs"]["method_types"][kind]))
            message += f"; settings of type '{kind}': type, {', '.join(allowed)}"
            refused = schema["$defs"]["method_types"][kind].get("refused_settings", {})
            message += "".join(f" ({why})" for key, why in refused.items() if f"'{key}'" in best.message)
        raise ConfigError(message)
    _check_quantization(".".join(path[1:]), entry, method_defaults(kind).get("quantize", "none"))


def _check_by_model_keys(config: dict, name: str, model: str, override: dict) -> None:
    """``methods.<name>.by_model.<model>`` names a model and changes only how the method runs."""
    where = f"methods.{name}.by_model.{model}"
    if model not in config["models"]:
        raise ConfigError(f"config key '{where}': '{model}' is not a key of 'models' "
                          f"(defined: {', '.join(config['models'])})")
    fixed = [k for k in override if k in ENTRY_ONLY_KEYS]
    if fixed:
        raise ConfigError(f"config key '{where}.{fixed[0]}': set on the entry, not per model "
                          f"({', '.join(ENTRY_ONLY_KEYS)} say what the entry is and where it runs)")


def _check_quantization(name: str, entry: dict, default_quantize: str) -> None:
    """4-bit settings given for another bit width mean nothing, and are refused rather than ignored. Only
    settings the entry gives count: the qlora preset's double_quant is dropped when its quantize is int8."""
    quantize = entry.get("quantize", default_quantize)
    if entry.get("double_quant") and quantize not in ("nf4", "fp4"):
        raise ConfigError(
            f"config key 'methods.{name}.double_quant': double quantization compresses the constants of 4-bit "
            f"blocks, but quantize is '{quantize}'; set quantize to nf4 or fp4, or double_quant to false")
    if entry.get("compute_dtype") and quantize not in ("nf4", "fp4"):
        raise ConfigError(
            f"config key 'methods.{name}.compute_dtype': the dtype a 4-bit base dequantizes to, but quantize is "
            f"'{quantize}'; drop compute_dtype or set quantize to nf4 or fp4")


def _expand_lr_grid(config: dict) -> None:
    """A learning-rate sweep (``lr_grid``) becomes one variant per rate (lorabench.config.lr_grid), each scored on a
    slice held out from the train split: a dataset without ``holdout_size`` is refused, never scored on its
    eval split. Idempotent: a config validated twice expands once."""
    from lorabench.config.lr_grid import expand_grid, grid_variants

    grid = config.get("lr_grid") or {}
    if not grid:
        return
    variants = grid_variants(grid)
    todo = {}
    for entry, rates in grid.items():
        if entry in config["methods"]:
            todo[entry] = rates
        elif not all(v in config["methods"] for v, (e, _) in variants.items() if e == entry):
            raise ConfigError(f"config key 'lr_grid.{entry}': not a key of 'methods' "
                              f"(defined: {', '.join(config['methods'])})")
    for name, ds in config["datasets"].items():
        if not ds.get("holdout_size"):
            raise ConfigError(
                f"config key 'datasets.{name}.holdout_size': a learning-rate sweep (lr_grid) scores each rate on a "
                "slice held out from the train split, never on the eval split; set holdout_size to its number of "
                "examples (language modelling: windows)")
        if ds.get("scored_on") == "eval_split":
            raise ConfigError(
                f"config key 'datasets.{name}.scored_on': a learning-rate sweep (lr_grid) scores each rate on the "
                "holdout_size slice, never on the eval split; set it to holdout or drop it")
        ds["scored_on"] = "holdout"
    config["methods"] = expand_grid(config["methods"], todo)


def _fill_defaults(config: dict, schema: dict) -> None:
    """Fill ``default`` values of the schema into the config (the parts Snakemake jobs read); every methods
    entry gets its ``type`` written out."""
    for name, params in config.get("methods", {}).items():
        params["type"] = params.get("type", name)
        for key, value in method_defaults(params["type"]).items():
            params.setdefault(key, value)
    for section in ("training", "evaluation"):
        for key, sub in schema["properties"][section]["properties"].items():
            if "default" in sub:
                config[section].setdefault(key, sub["default"])
    for section in ("datasets", "models"):
        entry_schema = schema["properties"][section]["additionalProperties"]["properties"]
        for entry in config[section].values():
            for key, sub in entry_schema.items():
                if "default" in sub:
                    entry.setdefault(key, copy.deepcopy(sub["default"]))
    for ds in config["datasets"].values():
        ds.setdefault("stride", ds["max_length"])  # a default that depends on another setting: no window overlap
        if ds["scored_on"] is None:  # holdout under lr_grid, set by _expand_lr_grid
            ds["scored_on"] = "eval_split"
    for key, sub in schema["properties"].items():
        if "default" in sub:
            config.setdefault(key, copy.deepcopy(sub["default"]))


def _semantic_checks(config: dict) -> None:
    for ds_name, ds in config["datasets"].items():
        if ds["model"] not in config["models"]:
            raise ConfigError(
                f"config key 'datasets.{ds_name}.model': '{ds['model']}' is not a key of 'models' "
                f"(defined: {', '.join(config['models'])})"
            )
        if ds["task"] == "classification" and not ds.get("label_field"):
            raise ConfigError(f"config key 'datasets.{ds_name}.label_field': required for task 'classification'")
        if ds["stride"] > ds["max_length"]:
            raise ConfigError(
                f"config key 'datasets.{ds_name}.stride': {ds['stride']} exceeds max_length {ds['max_length']}; "
                "windows would skip tokens (allowed: 1..max_length)"
            )
    for name, params in config["methods"].items():
        unknown = [d for d in params.get("datasets", []) if d not in config["datasets"]]
        if unknown:
            raise ConfigError(f"config key 'methods.{name}.datasets': {', '.join(map(repr, unknown))} is not a key "
                              f"of 'datasets' (defined: {', '.join(config['datasets'])})")
    if len(config["methods"]) > 1 and config["baseline_method"] not in config["methods"]:
        raise ConfigError(
            f"config key 'baseline_method': '{config['baseline_method']}' is not among the configured methods "
            f"({', '.join(config['methods'])})"
        )
    _check_dataset_training(config)
    _check_curves(config)
    _check_sources(config)


def _check_dataset_training(config: dict) -> None:
    """Each dataset's training overrides, merged, against the training section's schema (errors name the key)."""
    training_schema = load_schema()["properties"]["training"]
    for name, ds in config["datasets"].items():
        if not ds.get("training"):
            continue
        errors = list(jsonschema.Draft202012Validator(training_schema).iter_errors(dataset_training(config, name)))
        if errors:
            best = jsonschema.exceptions.best_match(errors)
            raise ConfigError(_explain(best, ("datasets", name, "training")))


def _optimizer_steps(config: dict, name: str) -> int | None:
    """A dataset's optimizer steps per run, where its config fixes them (train_size given); else None."""
    ds, training = config["datasets"][name], dataset_training(config, name)
    if not ds["train_size"]:
        return training.get("max_steps")
    return optimizer_steps(ds["train_size"], training)[1]


def _check_curves(config: dict) -> None:
    """Held-out curves and targets: a slice to score them on, no more points than optimizer steps."""
    for name, ds in config["datasets"].items():
        if ds["scored_on"] == "holdout" and not ds["holdout_size"]:
            raise ConfigError(f"config key 'datasets.{name}.scored_on': holdout needs a held-out slice; set "
                              f"datasets.{name}.holdout_size to its number of examples, or scored_on to eval_split")
        points = curve_points(config, name)
        if ds.get("target") and not ds["holdout_size"]:
            raise ConfigError(
                f"config key 'datasets.{name}.target': a target is judged on the held-out curve, scored on a slice "
                f"of the train split, and '{name}' holds none out; set datasets.{name}.holdout_size (examples; "
                "language modelling: windows), or drop the target")
        if ds.get("target") and not points:
            raise ConfigError(f"config key 'datasets.{name}.target': a target is judged on the held-out curve, "
                              "which is off (curve_points 0); set evaluation.curve_points (or the dataset's) above 0")
        steps = _optimizer_steps(config, name)
        if ds["holdout_size"] and steps is not None and points > steps:
            key = (f"datasets.{name}.curve_points" if ds.get("curve_points") is not None
                   else "evaluation.curve_points")
            raise ConfigError(f"config key '{key}': {points} curve points, but runs on '{name}' take only {steps} "
                              f"optimizer steps; set it to at most {steps}")


def _check_sources(config: dict) -> None:
    """Every repo must be reachable: present in the snapshot folder, or the hub allowed."""
    snapshots = config["snapshots"]
    repos = [("models", m["repo"], f"models.{k}.repo") for k, m in config["models"].items()]
    repos += [("datasets", d["repo"], f"datasets.{k}.repo") for k, d in config["datasets"].items()]
    if snapshots:
        if not Path(snapshots).is_dir():
            raise ConfigError(
                f"config key 'snapshots': folder '{snapshots}' does not exist; give a folder laid out like "
                "../shared/hf (--config snapshots=PATH) or '' to download from the hub"
            )
        for kind, repo, key in repos:
            if not snapshot_path(snapshots, kind, repo).is_dir():
                raise ConfigError(
                    f"config key '{key}': '{repo}' has no snapshot at {snapshot_path(snapshots, kind, repo)}; "
                    f"download it where the hub is reachable (hf download {repo} "
                    f"{'--repo-type dataset ' if kind == 'datasets' else ''}--local-dir "
                    f"SNAPSHOTS/{kind}/{repo}) or point --config snapshots=PATH at a folder that has it"
                )
    elif os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise ConfigError(
            f"config key 'snapshots': empty (download from the hub) but HF_HUB_OFFLINE is set, so "
            f"'{repos[0][1]}' cannot be fetched; set --config snapshots=PATH to a folder laid out like ../shared/hf"
        )


def _check_trackers(config: dict) -> None:
    missing = not_installed(config["tracking"])
    if missing:
        packages = " ".join(TRACKERS[name][1] for name in missing)
        raise ConfigError(f"config key 'tracking': {', '.join(missing)} named but not installed; install the "
                          f"trackers with {INSTALL} (or pip install {packages}), or remove "
                          f"{'it' if len(missing) == 1 else 'them'} from 'tracking'")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate against the schema, fill defaults, check cross-references; raise ConfigError naming the key."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        # The deepest error under oneOf/$ref is the one that names the field.
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_explain(best))
    _validate_methods(config, schema)
    _expand_lr_grid(config)
    _fill_defaults(config, schema)
    _semantic_checks(config)
    _check_trackers(config)
    return config
