"""Fine-tuning methods, one module each, registered under their config names.

A method decides how the base model is loaded and wrapped, which optimizer runs, what extra loss or
per-step action it needs, and what it reports. The trainer calls the same hooks for every method.
"""

from lorabench.methods.base import METHODS, Method, count_parameters, register  # noqa: F401
from lorabench.precision import FP32, Precision
from lorabench.methods import full_ft, hira, lora, qlora, sparse_lora, sparselora  # noqa: F401  (registration)


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; registered: {', '.join(sorted(METHODS))}") from None


def build_method(name: str, params: dict, target_modules: list[str], precision: Precision = FP32,
                 inputs: dict | None = None) -> Method:
    return method_class(name)(name, params, target_modules, precision, inputs)


def architecture_params(name: str, params: dict) -> dict:
    """The method's settings that shape the model (rank, alpha, ...), without the training-only ones."""
    dropped = set(method_class(name).training_only_params)
    return {k: v for k, v in params.items() if k not in dropped}
