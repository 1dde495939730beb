"""HiRA (Huang et al., ICLR 2025) through PEFT: delta W = W0 * (B A), a Hadamard product with the frozen
weight, so the update can be high-rank while training only r * (d_in + d_out) parameters per layer."""

from __future__ import annotations

import torch

from lorabench.methods.base import Method, register
from lorabench.methods.lora import head_modules_present


@register("hira")
class HiRA(Method):
    mergeable = True

    def build(self, loader) -> torch.nn.Module:
        from peft import HiraConfig, get_peft_model

        base = self.load_base(loader)
        config = HiraConfig(
            r=self.params["r"],
            hira_dropout=self.params["dropout"],
            target_modules=self.params.get("target_modules") or self.target_modules,
            task_type=loader.peft_task_type,
            modules_to_save=head_modules_present(base, loader.head_modules) or None,
        )
        return get_peft_model(base, config)
