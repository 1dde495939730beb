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
            bnb_4bit_compute_dtype=self.compute_dtype(),
            # A quantized classifier head breaks evaluation, a quantized tied LM head breaks loading: heads stay
            # in full precision (classifier heads also train).
            llm_int8_skip_modules=loader.unquantized_modules,
        )
        model = loader.load(quantization_config=quant)
        if disable_cpu_bf16_repack(model) == 0:
            raise RuntimeError("QLoRA: no Linear4bit layer after loading with BitsAndBytesConfig(load_in_4bit=True)")
        return model

    def compute_dtype(self) -> torch.dtype:
        """The dtype the 4-bit base dequantizes to: the run's precision unless ``compute_dtype`` overrides it."""
        override = self.params.get("compute_dtype")
        return getattr(torch, override) if override else self.precision.compute_dtype

    @classmethod
    def precision_conflict(cls, params: dict, precision: str) -> str | None:
        override = params.get("compute_dtype")
        wanted = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
        if override and precision != "fp32" and override != wanted:
            # Autocast would compute in one half type and the 4-bit layers dequantize to another.
            return (f"compute_dtype {override} contradicts precision {precision} (autocast in {wanted}); "
                    "drop compute_dtype to follow the precision, or set it to " + wanted)
        return None

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
