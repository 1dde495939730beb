"""Fine-tuning methods, one module each, registered under their config names.

A method decides how the base model is loaded and wrapped, which optimizer runs, what extra loss or
per-step action it needs, and what it reports. The trainer calls the same hooks for every method.
"""

from lorabench.methods.base import METHODS, Method, count_parameters, register  # noqa: F401
from lorabench.methods import full_ft, hira, lora, qlora, sparse_lora  # noqa: F401  (registration)


def build_method(name: str, params: dict, target_modules: list[str]) -> Method:
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; registered: {', '.join(sorted(METHODS))}") from None
    return cls(name, params, target_modules)
