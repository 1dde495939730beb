"""What SparseLoRA's FFN and attention sparsity share: finding a submodule, shadowing a method, and computing
only some output or input channels of a (LoRA-wrapped) linear layer on weights gathered to them."""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F


def submodule(module: torch.nn.Module, path: str):
    return functools.reduce(getattr, path.split("."), module)


def replace_method(block: torch.nn.Module, path: str, wrap: Callable) -> Callable[[], None]:
    """Shadow the method at ``path`` inside ``block`` with ``wrap(original method)``; returns the undo."""
    owner_path, _, name = path.rpartition(".")
    owner = submodule(block, owner_path) if owner_path else block
    setattr(owner, name, wrap(getattr(owner, name)))  # an instance attribute shadows the class's method
    return lambda: delattr(owner, name)


def map_for(maps: dict, model_type: str, part: str, setting: str):
    """``maps[model_type]``, or a ValueError naming the architecture and those ``setting`` supports."""
    if model_type not in maps:
        raise ValueError(f"no {part} channel map for architecture '{model_type}'; {setting} supports "
                         f"{', '.join(sorted(maps))}")
    return maps[model_type]


# --- linear layers narrowed to a set of hidden channels (plain nn.Linear or PEFT LoRA) -------------------------
def linear_parts(linear: torch.nn.Module):
    """(frozen nn.Linear, [(lora_A, lora_B, dropout, scale), ...]) of a plain or PEFT-LoRA linear."""
    base = getattr(linear, "base_layer", linear)
    adapters = []
    if base is not linear and not linear.disable_adapters:
        if linear.merged:
            raise RuntimeError("sparselora: adapters are merged into the base weights; unmerge before training")
        for name in linear.active_adapters:
            if name not in linear.lora_A:
                continue
            if linear.use_dora.get(name):
                raise NotImplementedError("sparselora does not narrow DoRA layers")
            adapters.append((linear.lora_A[name], linear.lora_B[name], linear.lora_dropout[name],
                             linear.scaling[name]))
    return base, adapters


def output_channels(linear: torch.nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``linear(x)[..., idx]``, computing only those output channels."""
    base, adapters = linear_parts(linear)
    bias = None if base.bias is None else base.bias.index_select(0, idx)
    y = F.linear(x, base.weight.index_select(0, idx), bias)
    for lora_a, lora_b, dropout, scale in adapters:
        y = y + F.linear(lora_a(dropout(x)), lora_b.weight.index_select(0, idx)) * scale
    return y


def input_channels(linear: torch.nn.Module, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``linear(h_full)`` where ``h_full`` equals ``h`` on channels ``idx`` and is zero elsewhere."""
    base, adapters = linear_parts(linear)
    y = F.linear(h, base.weight.index_select(1, idx), base.bias)
    for lora_a, lora_b, dropout, scale in adapters:
        y = y + lora_b(F.linear(dropout(h), lora_a.weight.index_select(1, idx))) * scale
    return y


# --- the per-batch mechanism ------------------------------------------------------------------------------------
def kept_channels(width: int, sparsity: float) -> int:
    """Channels kept at ``sparsity`` (at least one)."""
    return max(1, int(round(width * (1.0 - sparsity))))
