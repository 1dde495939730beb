"""What every PEFT adapter type shares: a frozen base, stored as the quantize axis says, wrapped by PEFT.

An adapter type (LoRA and its sparse variants, HiRA, ...) only says which PEFT config it builds; loading,
quantizing, merging and the merge error of a quantized base are handled here once."""

from __future__ import annotations

import torch

from lorabench.loading.quantization import merge_error
from lorabench.methods.base import Method, SettingError


def head_modules_present(model: torch.nn.Module, head_names: list[str]) -> list[str]:
    """Task-head module names that exist in this architecture (PEFT trains and saves them in full)."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [h for h in head_names if h in present]


class AdapterMethod(Method):
    """A PEFT adapter on a frozen base; subclasses give ``peft_config``."""

    @property
    def mergeable(self) -> bool:
        # Merging into a quantized base dequantizes, adds and re-quantizes: the adapter's effect is partly lost
        # (merge_error_rel), so a quantized adapter is deployed unmerged.
        return not self.quantization.quantized

    #: Settings that are an adapted layer's rank: none may exceed the smallest adapted layer's width.
    rank_settings: tuple[str, ...] = ("r",)

    @classmethod
    def check_settings(cls, params: dict, shape) -> None:
        super().check_settings(params, shape)
        width = shape.smallest_width if shape else None
        for key in cls.rank_settings:
            if width and params.get(key, 0) > width:
                raise SettingError(key, f"rank {params[key]} exceeds the smallest adapted layer width {width}; "
                                        f"allowed: 1..{width}")

    def peft_config(self, loader, model: torch.nn.Module):
        raise NotImplementedError

    def load_base(self, loader) -> torch.nn.Module:
        if self.quantization.quantized:
            return self.quantization.load(loader, self.precision)
        return loader.load()

    def build(self, loader) -> torch.nn.Module:
        from peft import get_peft_model, prepare_model_for_kbit_training

        base = self.load_base(loader)
        if self.quantization.quantized:
            # Layer norms and other small weights to fp32, input gradients on: what PEFT needs to train on a
            # k-bit base (gradient checkpointing stays off: it would change what training memory measures).
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        return get_peft_model(base, self.peft_config(loader, base))

    def report(self, model: torch.nn.Module) -> dict:
        out = super().report(model)
        if self.quantization.quantized:
            out["merge_error_rel"] = merge_error(model)
        return out
