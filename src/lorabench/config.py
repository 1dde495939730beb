"""Configuration: schema validation with messages that name the key, and typed views of config slices."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lorabench.hub import snapshot_path
from lorabench.schema import load_schema, method_defaults, method_settings


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
            if kind == "sparselora" and "'quantize'" in best.message:
                message += (" (sparselora narrows the base weights to the kept FFN channels on every step, "
                            "which a quantized base stores packed: it trains on a full-precision base)")
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


def method_params_on(config: dict, method: str, model: str) -> dict:
    """A method's settings on ``model``'s datasets, as its jobs see them: the entry with ``by_model.<model>``
    merged over it, without ``datasets`` and ``by_model`` (where it runs and the overrides say nothing more)."""
    params = config["methods"][method]
    merged = {**params, **params.get("by_model", {}).get(model, {})}
    return {k: v for k, v in merged.items() if k not in ("datasets", "by_model")}


def _setting_key(config: dict, method: str, model: str, key: str) -> str:
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
    """A learning-rate sweep (``lr_grid``) becomes one variant per rate (lorabench.lr_sweep), each scored on a
    slice held out from the train split: a dataset without ``holdout_size`` is refused, never scored on its
    eval split. Idempotent: a config validated twice expands once."""
    from lorabench.lr_sweep import expand_grid, grid_variants

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
                    entry.setdefault(key, sub["default"])
    for ds in config["datasets"].values():
        ds.setdefault("config_name", None)
        ds.setdefault("label_field", None)
        ds.setdefault("stride", ds["max_length"])
    for model in config["models"].values():
        model.setdefault("gguf_file", None)
        model.setdefault("target_modules", None)
    config.setdefault("device", "auto")
    config.setdefault("precision", "auto")
    config.setdefault("baseline_method", "lora")
    config.setdefault("cost_per_device_hour", {})


def _semantic_checks(config: dict) -> None:
    from lorabench.methods import METHODS  # registry; imported lazily (pulls in torch)

    for name, params in config["methods"].items():
        if params["type"] not in METHODS:  # a schema entry without a registered class
            raise ConfigError(f"config key 'methods.{name}': method type '{params['type']}' is not registered; "
                              f"registered: {', '.join(sorted(METHODS))}")
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
    for key, _, params in method_entries(config):
        if "prune_start_frac" in params and params["prune_start_frac"] > params["prune_end_frac"]:
            raise ConfigError(
                f"config key '{key}.prune_start_frac': {params['prune_start_frac']} is after "
                f"prune_end_frac {params['prune_end_frac']} (allowed: start <= end)"
            )
    if len(config["methods"]) > 1 and config["baseline_method"] not in config["methods"]:
        raise ConfigError(
            f"config key 'baseline_method': '{config['baseline_method']}' is not among the configured methods "
            f"({', '.join(config['methods'])})"
        )
    _check_dataset_training(config)
    _check_adapter_settings(config)
    _check_precision(config)
    _check_sources(config)
    _check_ranks(config)
    _check_pooling(config)
    _check_contextual_sparsity(config)


def dataset_entry(config: dict, dataset: str) -> dict:
    """A dataset's entry without its training overrides: what its data and their tokens depend on (changing how
    runs train on it retokenizes nothing)."""
    return {k: v for k, v in config["datasets"][dataset].items() if k != "training"}


def dataset_training(config: dict, dataset: str) -> dict:
    """The training settings of runs on ``dataset``: the top-level section with the dataset's overrides."""
    return {**config["training"], **config["datasets"][dataset].get("training", {})}


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


def _check_adapter_settings(config: dict) -> None:
    """Settings that only make sense together (AdaLoRA's ranks), and generic PEFT configs, checked by PEFT."""
    for key, _, params in method_entries(config):
        if params["type"] == "adalora" and params["target_r"] > params["init_r"]:
            raise ConfigError(
                f"config key '{key}.target_r': {params['target_r']} exceeds init_r {params['init_r']}; "
                "AdaLoRA prunes ranks from init_r down to target_r (allowed: 1..init_r)")
        if params["type"] == "peft":
            from lorabench.methods.peft_generic import PeftConfigError, make_peft_config

            try:
                make_peft_config(params["peft_config"], None, None, None)
            except PeftConfigError as err:
                raise ConfigError(f"config key '{key}.peft_config': {err}") from None


def _check_precision(config: dict) -> None:
    """Every method must be able to run in the configured precision ('auto' may become bf16 or fp32)."""
    from lorabench.methods import METHODS

    requested = config["precision"]
    for precision in (["bf16", "fp32"] if requested == "auto" else [requested]):
        for key, name, params in method_entries(config):
            why = METHODS[params["type"]].precision_conflict(params, precision)
            if why:
                via = f" ('auto' gives {precision} on hardware with native bf16)" if requested == "auto" else ""
                raise ConfigError(f"config key '{key}': method '{name}' cannot run in precision "
                                  f"'{precision}'{via}: {why}")


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


def _check_pooling(config: dict) -> None:
    """Mean pooling replaces a [CLS] pooler module: refused for an architecture without one (read from the
    snapshot's config; without a snapshot the load refuses it with the same message)."""
    from lorabench.models import mean_pooling_refusal, model_shape

    for name, model in config["models"].items():
        if model["pooling"] != "mean":
            continue
        shape = model_shape(config["snapshots"], model)
        refusal = mean_pooling_refusal(shape.model_type) if shape else None
        if refusal:
            raise ConfigError(f"config key 'models.{name}.pooling': {refusal}")


def _check_ranks(config: dict) -> None:
    """A rank larger than the smallest adapted layer is refused (read from the snapshot's config or GGUF)."""
    from lorabench.models import model_shape

    for ds_name, ds in config["datasets"].items():
        shape = model_shape(config["snapshots"], config["models"][ds["model"]])
        width = shape.smallest_width if shape else None
        if width is None:
            continue
        for name in config["methods"]:
            params = method_params_on(config, name, ds["model"])
            for key in ("r", "init_r"):
                if params.get(key, 0) > width:
                    raise ConfigError(
                        f"config key '{_setting_key(config, name, ds['model'], key)}': rank {params[key]} exceeds "
                        f"the smallest adapted layer "
                        f"width {width} of model '{ds['model']}' (dataset {ds_name}); allowed: 1..{width}")


def _check_contextual_sparsity(config: dict) -> None:
    """SparseLoRA needs a channel map for the architecture (an attention map too where attn_sparsity is set),
    dense layers inside the model, and a predictor rank within the smallest side of the projections it
    approximates."""
    from lorabench.attn_sparsity import ATTN_MAPS
    from lorabench.ffn_sparsity import FFN_MAPS
    from lorabench.methods import method_class
    from lorabench.methods.sparselora import LayerSettingError, layer_sparsities
    from lorabench.models import model_shape

    for name, entry in config["methods"].items():
        if not getattr(method_class(entry["type"]), "uses_predictor", False):
            continue
        for ds_name, ds in config["datasets"].items():
            params = method_params_on(config, name, ds["model"])
            shape = model_shape(config["snapshots"], config["models"][ds["model"]])
            if shape is None:
                continue
            where = f"model '{ds['model']}' of dataset {ds_name}"
            if shape.model_type not in FFN_MAPS:
                raise ConfigError(
                    f"config key 'methods.{name}': architecture '{shape.model_type}' ({where}) has no FFN channel "
                    f"map; sparselora supports {', '.join(sorted(FFN_MAPS))} (add one in lorabench.ffn_sparsity)")
            if shape.num_layers is None or shape.hidden is None or shape.intermediate is None:
                continue
            try:
                layer_sparsities(params, shape.num_layers)
                if any(layer_sparsities(params, shape.num_layers, "attn_sparsity")) \
                        and shape.model_type not in ATTN_MAPS:
                    raise LayerSettingError(
                        "attn_sparsity", f"architecture '{shape.model_type}' has no attention channel map; "
                        f"attn_sparsity supports {', '.join(sorted(ATTN_MAPS))} (set it to 0, or add a map in "
                        f"lorabench.attn_sparsity)")
            except LayerSettingError as err:
                raise ConfigError(f"config key '{_setting_key(config, name, ds['model'], err.key)}': {err.message} "
                                  f"({where})") from None
            width = shape.smallest_width  # the predictor approximates the up-projections and q, k, v
            if params["predictor_rank"] > width:
                raise ConfigError(
                    f"config key '{_setting_key(config, name, ds['model'], 'predictor_rank')}': "
                    f"{params['predictor_rank']} exceeds the smallest side {width} of the projections the "
                    f"predictor approximates ({where}); allowed: 1..{width}")


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
    return config


def sorted_keys(value):
    """The same config with every mapping's keys in sorted order, recursively (lists keep their order).

    Snakemake compares a job's params with the recorded ones including the order of dict keys, so a config
    file re-saved with its keys in another order would rerun every job; jobs read this canonical form."""
    if isinstance(value, dict):
        return {k: sorted_keys(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [sorted_keys(v) for v in value]
    return value


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    with open(path) as fh:
        config = yaml.safe_load(fh)
    config.update(overrides or {})
    return validate_config(config)


@dataclass(frozen=True)
class TrainingSettings:
    """Settings shared by every method, so that runs differ only in the method (and its learning rate)."""

    epochs: int
    """Passes over the training subset."""
    batch_size: int
    """Examples per micro-batch."""
    grad_accum_steps: int
    """Micro-batches per optimizer step."""
    warmup_ratio: float
    """Fraction of optimizer steps with linear warmup; linear decay to zero afterwards."""
    weight_decay: float
    """AdamW weight decay."""
    max_grad_norm: float
    """Gradient clipping norm."""
    subset_seed: int
    """Seed of the fixed data subsets (identical for every run)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; None runs every epoch."""
    mlm_probability: float = 0.15
    """Masking rate for masked-LM training and evaluation."""
    checkpoint_every: int = 0
    """Optimizer steps between resumable checkpoints; 0 disables them."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them (QLoRA's recipe):
    less training memory for every method alike, at the cost of a second forward through each layer."""

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
