"""HiRA (Huang et al., ICLR 2025) through PEFT: delta W = W0 * (B A), a Hadamard product with the frozen
weight, so the update can be high-rank while training only r * (d_in + d_out) parameters per layer.

With ``quantize`` it is QHiRA: W0 is the dequantized base, recomputed every forward (PEFT's hira/bnb.py)."""

from __future__ import annotations

from lorabench.methods.adapter import AdapterMethod, head_modules_present
from lorabench.methods.base import register


@register("hira")
class HiRA(AdapterMethod):
    colour = "#8c564b"

    def peft_config(self, loader, model):
        from peft import HiraConfig

        return HiraConfig(
            r=self.params["r"],
            hira_dropout=self.params["dropout"],
            target_modules=self.params.get("target_modules") or self.target_modules,
            task_type=loader.peft_task_type,
            modules_to_save=head_modules_present(model, loader.head_modules) or None,
        )
