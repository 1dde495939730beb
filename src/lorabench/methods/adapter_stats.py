"""What a LoRA adapter looks like after training: its weights by layer, how sparse, how high its rank.

Read by every LoRA-family method's report (plain LoRA reports its sparsity too, as the reference for the
sparse variants) and by the sparse variants' pruning."""

from __future__ import annotations

import torch


def lora_pairs(model: torch.nn.Module):
    """(layer name, lora_A weight, lora_B weight) for every LoRA layer of the default adapter."""
    for name, module in model.named_modules():
        a = getattr(module, "lora_A", None)
        if isinstance(a, torch.nn.ModuleDict) and "default" in a:
            yield name, module.lora_A["default"].weight, module.lora_B["default"].weight


def adapter_weights(model: torch.nn.Module):
    for _, a, b in lora_pairs(model):
        yield a
        yield b


@torch.no_grad()
def sparsity_report(model: torch.nn.Module) -> dict:
    """Fraction of exactly-zero adapter weights, mean numerical rank of B A, share of live rank components."""
    total = zeros = 0
    ranks, components, live = [], 0, 0
    for _, a, b in lora_pairs(model):
        total += a.numel() + b.numel()
        zeros += int((a == 0).sum() + (b == 0).sum())
        ranks.append(int(torch.linalg.matrix_rank((b.float() @ a.float()))))
        alive = (a.abs().sum(dim=1) > 0) & (b.abs().sum(dim=0) > 0)
        components += alive.numel()
        live += int(alive.sum())
    if not ranks:
        return {}
    return {
        "adapter_sparsity": zeros / total if total else 0.0,
        "effective_rank": sum(ranks) / len(ranks) if ranks else 0.0,
        "live_rank_components": live / components if components else 0.0,
    }
