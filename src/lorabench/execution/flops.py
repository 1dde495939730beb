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
    """Inference FLOPs per example and, for a model with trainable weights, training FLOPs per example (fvcore's
    estimate, checked against torch's counter); the untrained base trains nothing, so those are NaN."""
    macs, _ = forward_macs(model, eval_length, vocab)
    inference = {"macs_per_example": macs, "flops_per_example": 2 * macs, "eval_mean_length_tokens": eval_length}
    if not any(p.requires_grad for p in model.parameters()):
        nan = float("nan")
        return {**inference, "train_flops_per_example": nan, "train_mean_length_tokens": train_length,
                "backward_multiplier": nan, "train_step_flops_torch_counter": nan,
                "train_flops_vs_torch_counter_ratio": nan}
    train_macs, trainable_macs = forward_macs(model, train_length, vocab)
    mult = backward_multiplier(train_macs, trainable_macs)
    step_flops = 2 * train_macs * (1 + mult)
    measured = torch_counted_step_flops(model, train_length, vocab)
    return {
        **inference,
        "train_flops_per_example": step_flops,
        "train_mean_length_tokens": train_length,
        "backward_multiplier": mult,
        "train_step_flops_torch_counter": measured,
        "train_flops_vs_torch_counter_ratio": step_flops / measured if measured else float("nan"),
    }


_EXTRA_FORMULAS_REGISTERED = False


def _register_extra_formulas() -> None:
    """Teach torch.utils.flop_counter the ops our steps run that it does not know: the CPU flash-attention
    kernels (forward and backward, with torch's own formulas for the CUDA ones) and bitsandbytes' 4-bit matmul."""
    global _EXTRA_FORMULAS_REGISTERED
    if _EXTRA_FORMULAS_REGISTERED:
        return
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=False)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=False)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    # bitsandbytes' fused 4-bit matmul (QLoRA's forward on CPU) is a custom op the counter does not know: it
    # multiplies A (..., in) by the dequantized weight of shape shapeB = (out, in). Its backward dequantizes
    # and runs aten.mm, which the counter counts already.
    try:
        import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)

        @fc.register_flop_formula(torch.ops.bitsandbytes.gemm_4bit, get_raw=True)
        def _gemm_4bit(a, b, shape_b, *args, out_val=None, **kwargs) -> int:
            return 2 * math.prod(a.shape[:-1]) * math.prod(shape_b)
    except (ImportError, AttributeError):
        pass
    _EXTRA_FORMULAS_REGISTERED = True


def step_flops_per_token(model, method, batch: dict, precision) -> dict[str, float]:
    """FLOPs of one training forward+backward per (padded) token, counted by torch.utils.flop_counter on
    ``batch``, for each kind of step the method takes (``method.compute_phases()``). The RNG state and the
    gradients are restored, so counting changes nothing in the run. Optimizer updates are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_extra_formulas()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    tokens = batch["input_ids"].numel()
    out = {}
    with torch.random.fork_rng(devices=devices):
        for phase in method.compute_phases():
            with method.computing(phase), FlopCounterMode(display=False) as counter:
                with precision.autocast():
                    loss = model(**batch).loss
                loss.float().backward()
            model.zero_grad(set_to_none=True)
            out[phase] = counter.get_total_flops() / tokens
    return out
