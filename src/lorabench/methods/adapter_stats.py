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


def _product_rank(b: torch.Tensor, a: torch.Tensor) -> int:
    """The numerical rank of ``b @ a`` (out x r times r x in) without forming it: with b = Qb Rb and a.T = Qa Ra,
    b @ a = Qb (Rb Ra.T) Qa.T has the singular values of the r x r core, so an 8 x 8 SVD replaces one of 384 x 384
    for MiniLM at rank 8 (the time saved: docs/measurements/default-run.md, 2026-12-07 (evening)). The
    tolerance is matrix_rank's default for the full product, eps x max(out, in) x the largest singular value."""
    core = torch.linalg.qr(b, mode="r")[1] @ torch.linalg.qr(a.T, mode="r")[1].T
    return int(torch.linalg.matrix_rank(core, rtol=torch.finfo(core.dtype).eps * max(b.shape[0], a.shape[1])))


@torch.no_grad()
def sparsity_report(model: torch.nn.Module) -> dict:
    """Fraction of exactly-zero adapter weights, mean numerical rank of B A, share of live rank components."""
    total = zeros = 0
    ranks, components, live = [], 0, 0
    for _, a, b in lora_pairs(model):
        total += a.numel() + b.numel()
        zeros += int((a == 0).sum() + (b == 0).sum())
        ranks.append(_product_rank(b.float(), a.float()))
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
