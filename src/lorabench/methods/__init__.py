"""Fine-tuning methods, one module each, registered under their config names.

A method decides how the base model is loaded and wrapped, which optimizer runs, what extra loss or
per-step action it needs, and what it reports. The trainer calls the same hooks for every method. A method
also owns what is known of it before any job runs: its config checks (``Method.check_settings``, run by
lorabench.methods.checks) and its traits for the analysis (family, figures, colour: ``Method.traits``).
"""

from lorabench.config.schema import method_defaults
from lorabench.methods import (adalora, full_ft, hira, lora, peft_generic, pruned_lora,  # noqa: F401  (registration)
                               sparselora, untrained)
from lorabench.methods.base import METHODS, Method, count_parameters, register  # noqa: F401
from lorabench.runtime.precision import FP32, Precision


def type_traits(types=None) -> dict[str, dict]:
    """Method.traits of the registered ``types`` (all of them by default), keyed by type: what the analysis jobs
    are told of each type, since they never import the methods."""
    return {kind: method_class(kind).traits() for kind in (sorted(METHODS) if types is None else types)}


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; registered: {', '.join(sorted(METHODS))}") from None


def method_type(name: str, params: dict) -> str:
    """The registered method a config entry is a variant of: its ``type``, or else its key."""
    return params.get("type") or name


def build_method(name: str, params: dict, target_modules: list[str], precision: Precision = FP32,
                 inputs: dict | None = None) -> Method:
    """The method of config entry ``name`` (a variant's key) with its ``params``; settings the mapping leaves
    out take the schema's defaults, as a validated config would have them."""
    kind = method_type(name, params)
    return method_class(kind)(name, {**method_defaults(kind), **params}, target_modules, precision, inputs)


def deployed_graph(name: str, params: dict) -> dict:
    """What a variant deploys, as a comparable key: the type whose graph it is (``Method.deploys_as``, else its
    own) and its architecture settings. Variants with equal keys share one efficiency measurement."""
    kind = method_type(name, params)
    deployed = method_class(kind).deploys_as or kind
    # The deployed type's defaults first: settings this type has no key for (LoRA's use_dora, quantize) are the
    # plain ones in its saved adapter.
    settings = {**architecture_params(deployed, {**method_defaults(deployed), "type": deployed}),
                **architecture_params(name, params)}
    return {"deployed_as": deployed, **{k: v for k, v in settings.items() if k != "type"}}


def architecture_params(name: str, params: dict) -> dict:
    """The method's settings that shape the model (type, rank, alpha, ...), without the training-only ones."""
    dropped = set(method_class(method_type(name, params)).training_only_params)
    return {k: v for k, v in params.items() if k not in dropped}
