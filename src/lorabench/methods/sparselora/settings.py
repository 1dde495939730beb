"""SparseLoRA's per-layer settings, resolved against a model's layer count: shared by the method and by the
config check that runs before any job."""

from __future__ import annotations

from lorabench.config.schema import method_defaults
from lorabench.methods.base import SettingError


def layer_sparsities(params: dict, num_layers: int, key: str = "ffn_sparsity") -> list[float]:
    """Per-layer sparsity from ``params[key]`` (``ffn_sparsity`` or ``attn_sparsity``: one value or one per
    layer) and ``dense_layers`` (indices, negative from the end, that stay dense), each the schema's default
    where ``params`` lacks it. Raises SettingError naming the key."""
    params = {**method_defaults("sparselora"), **params}
    value = params[key]
    if isinstance(value, list):
        if len(value) != num_layers:
            raise SettingError(key, f"{len(value)} values for a model with {num_layers} layers "
                                    f"(give one value, or exactly {num_layers})")
        sparsities = [float(v) for v in value]
    else:
        sparsities = [float(value)] * num_layers
    for index in params["dense_layers"]:
        if not -num_layers <= index < num_layers:
            raise SettingError("dense_layers", f"index {index} is outside the model's {num_layers} layers "
                                    f"(allowed: {-num_layers}..{num_layers - 1})")
        sparsities[index] = 0.0
    return sparsities
