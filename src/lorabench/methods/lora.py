"""LoRA (Hu et al., 2021) through PEFT: W x + (alpha / r) B A x, with A, B trainable and W frozen; and the
QLoRA preset (Dettmers et al., 2023), the same adapter on a 4-bit base."""

from __future__ import annotations

from lorabench.methods.adapter import AdapterMethod, head_modules_present
from lorabench.methods.adapter_stats import sparsity_report
from lorabench.methods.base import register


@register("lora")
class LoRA(AdapterMethod):
    colour = "#1f77b4"

    def peft_config(self, loader, model):
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

    def report(self, model):
        return {**super().report(model), **sparsity_report(model)}


@register("qlora")
class QLoRA(LoRA):
    colour = "#2ca02c"
    preset_of = "lora"
    figures = ("bits",)
    """LoRA on a 4-bit NF4 base with double quantization and paged AdamW. The preset is nothing but the
    schema's defaults of type qlora (quantize, double_quant, optimizer); the code is LoRA's."""
