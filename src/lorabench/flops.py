"""FLOPs with fvcore, per (method, dataset).

fvcore counts one fused multiply-add as one "flop", i.e. it reports MACs. The summary therefore has
``macs_per_example`` (fvcore's number) and ``flops_per_example`` = 2 x MACs, the convention of
torch.utils.flop_counter and of hardware peak figures. fvcore ignores scaled_dot_product_attention;
``sdpa_macs`` below counts it (Q K^T and the weighted sum of V).
"""

from __future__ import annotations

import math

import torch


def sdpa_macs(inputs, outputs) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: B*H*L*S*(D + Dv) multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, length, depth = q
    source = k[-2]
    return int(math.prod(batch) * length * source * (depth + v[-1]))


def _example(length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, min(vocab, 1000), (1, max(int(round(length)), 2)), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids)


class _LogitsOnly(torch.nn.Module):
    """fvcore traces with positional inputs and wants tensors out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def forward_macs(model, length: float, vocab: int) -> tuple[int, int]:
    """(total forward MACs for one example of ``length`` tokens, MACs in trainable-weight ops)."""
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    inputs = _example(length, vocab)
    analysis = FlopCountAnalysis(_LogitsOnly(model), inputs).set_op_handle(
        "aten::scaled_dot_product_attention", sdpa_macs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_module = analysis.by_module()
    total = analysis.total()
    trainable = 0
    for name, module in model.named_modules():
        if not _holds_trainable_weights(module):
            continue
        key = f"model.{name}" if name else "model"
        # MACs of this module's own ops: its count minus what its child modules count themselves.
        children = sum(by_module.get(f"{key}.{child}", 0) for child, _ in module.named_children())
        trainable += by_module.get(key, 0) - children
    return int(total), int(trainable)


def _holds_trainable_weights(module: torch.nn.Module) -> bool:
    """Trainable parameters used by this module's own ops: direct ones, or in a ParameterDict (HiRA's A, B)."""
    if any(p.requires_grad for p in module.parameters(recurse=False)):
        return True
    return any(isinstance(c, torch.nn.ParameterDict) and any(p.requires_grad for p in c.parameters())
               for c in module.children())


def backward_multiplier(total_macs: int, trainable_macs: int) -> float:
    """Backward cost relative to forward: gradients w.r.t. activations everywhere (1x) plus gradients
    w.r.t. weights only where weights train (another 1x of those ops)."""
    return 1.0 + trainable_macs / total_macs if total_macs else 0.0


def torch_counted_step_flops(model, length: float, vocab: int) -> int:
    """FLOPs (2 x MACs) of one forward+backward on one example, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    ids, mask = _example(length, vocab)
    with FlopCounterMode(display=False) as counter:
        out = model(input_ids=ids, attention_mask=mask).logits
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def count(model, eval_length: float, train_length: float, vocab: int) -> dict:
    macs, _ = forward_macs(model, eval_length, vocab)
    train_macs, trainable_macs = forward_macs(model, train_length, vocab)
    mult = backward_multiplier(train_macs, trainable_macs)
    step_flops = 2 * train_macs * (1 + mult)
    measured = torch_counted_step_flops(model, train_length, vocab)
    return {
        "macs_per_example": macs,
        "flops_per_example": 2 * macs,
        "eval_mean_length_tokens": eval_length,
        "train_flops_per_example": step_flops,
        "train_mean_length_tokens": train_length,
        "backward_multiplier": mult,
        "train_step_flops_torch_counter": measured,
        "train_flops_vs_torch_counter_ratio": step_flops / measured if measured else float("nan"),
    }
