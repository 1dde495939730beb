"""QLoRA (Dettmers et al., 2023): the frozen base in 4-bit NF4 with double quantization, LoRA adapters in
full precision on top, and a paged AdamW. CPU quirks of bitsandbytes are handled here and nowhere else."""

from __future__ import annotations

import torch

from lorabench.methods.base import register
from lorabench.methods.lora import LoRA


def disable_cpu_bf16_repack(model: torch.nn.Module) -> int:
    """On CPUs with AVX512-BF16, an eval forward repacks Linear4bit weights, after which training fails;
    turning the fast path off on every Linear4bit keeps the packed NF4 layout. Returns the layer count."""
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


@register("qlora")
class QLoRA(LoRA):
    # Deployed as the 4-bit base plus the adapter: merging into NF4 weights would re-quantize them.
    mergeable = False
    flops_proxy = "lora"

    def load_base(self, loader) -> torch.nn.Module:
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=self.params.get("double_quant", True),
            bnb_4bit_compute_dtype=getattr(torch, self.params.get("compute_dtype", "float32")),
            # A quantized classifier head breaks evaluation; heads stay in full precision and train.
            llm_int8_skip_modules=loader.head_modules + ["lm_head"],
        )
        model = loader.load(quantization_config=quant)
        if disable_cpu_bf16_repack(model) == 0:
            raise RuntimeError("QLoRA: no Linear4bit layer after loading with BitsAndBytesConfig(load_in_4bit=True)")
        return model

    def build(self, loader) -> torch.nn.Module:
        from peft import get_peft_model, prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(self.load_base(loader), use_gradient_checkpointing=False)
        return get_peft_model(base, self.peft_config(loader, base))

    def make_optimizer(self, params, lr, weight_decay):
        import bitsandbytes as bnb

        self._optimizer = bnb.optim.PagedAdamW(params, lr=lr, weight_decay=weight_decay)
        return self._optimizer

    def report(self, model):
        out = super().report(model)
        opt = getattr(self, "_optimizer", None)
        if opt is not None and getattr(opt, "_cpu_paged_warned", False):
            out["optimizer"] = "bitsandbytes.optim.PagedAdamW (unpaged fallback on CPU)"
        else:
            out["optimizer"] = "bitsandbytes.optim.PagedAdamW (paged)"
        return out
