"""LoRA (Hu et al., 2021) through PEFT: W x + (alpha / r) B A x, with A, B trainable and W frozen."""

from __future__ import annotations

import torch

from lorabench.methods.adapter_stats import sparsity_report
from lorabench.methods.base import Method, register


def head_modules_present(model: torch.nn.Module, head_names: list[str]) -> list[str]:
    """Task-head module names that exist in this architecture (PEFT trains and saves them in full)."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [h for h in head_names if h in present]


@register("lora")
class LoRA(Method):
    mergeable = True

    def peft_config(self, loader, model: torch.nn.Module):
        from peft import LoraConfig

        return LoraConfig(
            r=self.params["r"],
            lora_alpha=self.params["alpha"],
            lora_dropout=self.params["dropout"],
            target_modules=self.params.get("target_modules") or self.target_modules,
            task_type=loader.peft_task_type,
            modules_to_save=head_modules_present(model, loader.head_modules) or None,
            use_dora=self.params.get("use_dora", False),
            use_rslora=self.params.get("use_rslora", False),
        )

    def build(self, loader) -> torch.nn.Module:
        from peft import get_peft_model

        base = self.load_base(loader)
        return get_peft_model(base, self.peft_config(loader, base))

    def report(self, model):
        return {**super().report(model), **sparsity_report(model)}
