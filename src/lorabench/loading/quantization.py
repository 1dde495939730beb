"""The quantize axis: the frozen base of any adapter stored in 4 or 8 bits through bitsandbytes.

One place for what quantizing means here: the BitsAndBytesConfig a setting gives, the CPU quirks of
bitsandbytes, and what merging an adapter into a quantized base would lose."""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import torch

from lorabench.runtime.precision import Precision

#: Config values of ``quantize``, with the bits per weight of the stored base.
QUANTIZE_BITS = {"none": None, "nf4": 4, "fp4": 4, "int8": 8}
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Quantization:
    """How one method's frozen base is stored, from its config entry."""

    kind: str = "none"
    """none, nf4, fp4 or int8."""
    double_quant: bool = False
    """4-bit only: the blocks' scaling constants are quantized too."""
    compute_dtype: str | None = None
    """4-bit only: the dtype the base dequantizes to; None follows the run's precision."""

    @classmethod
    def from_params(cls, params: dict) -> "Quantization":
        kind = params.get("quantize", "none")
        if kind not in QUANTIZE_BITS:
            raise ValueError(f"quantize '{kind}' is not one of {', '.join(QUANTIZE_BITS)}")
        four_bit = kind in ("nf4", "fp4")
        return cls(kind, bool(params.get("double_quant")) and four_bit,
                   params.get("compute_dtype") if four_bit else None)

    @property
    def quantized(self) -> bool:
        return self.kind != "none"

    @property
    def bits(self) -> int | None:
        return QUANTIZE_BITS[self.kind]

    def dtype(self, precision: Precision) -> torch.dtype:
        """The dtype a 4-bit base computes in: the run's precision unless ``compute_dtype`` overrides it."""
        return getattr(torch, self.compute_dtype) if self.compute_dtype else precision.compute_dtype

    def precision_conflict(self, precision: str) -> str | None:
        """Why this setting contradicts the run's precision (fp32, bf16 or fp16), or None."""
        wanted = _DTYPE_NAMES[precision]
        if self.compute_dtype and precision != "fp32" and self.compute_dtype != wanted:
            # Autocast would compute in one half type and the 4-bit layers dequantize to another.
            return (f"compute_dtype {self.compute_dtype} contradicts precision {precision} (autocast in {wanted}); "
                    "drop compute_dtype to follow the precision, or set it to " + wanted)
        return None

    def bnb_config(self, precision: Precision, keep_full_precision: list[str]):
        """The transformers BitsAndBytesConfig of this setting; ``keep_full_precision`` are module names left
        unquantized (a quantized classifier head breaks evaluation, a quantized tied LM head breaks loading)."""
        from transformers import BitsAndBytesConfig

        if self.kind == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep_full_precision)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.kind,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=self.dtype(precision),
            llm_int8_skip_modules=keep_full_precision,
        )

    def load(self, loader, precision: Precision) -> torch.nn.Module:
        """The loader's base model with its linear layers quantized, ready to train adapters on."""
        model = loader.load(quantization_config=self.bnb_config(precision, loader.unquantized_modules))
        disable_cpu_bf16_repack(model)
        if self.kind == "int8":
            _log_once("bitsandbytes.autograd._functions")
        if not any(True for _ in quantized_linears(model)):
            raise RuntimeError(f"quantize {self.kind}: no quantized linear layer after loading {loader.model_dir}")
        return model


class _OncePerMessage(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        new = record.msg not in self.seen
        self.seen.add(record.msg)
        return new


def _log_once(logger_name: str) -> None:
    """bitsandbytes logs on every int8 forward that fp32 inputs are cast to fp16: once per message is enough."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _OncePerMessage) for f in logger.filters):
        logger.addFilter(_OncePerMessage())


def full_precision(params: dict) -> dict:
    """The same method settings on a full-precision base (what fvcore, which cannot trace a quantized layer,
    counts in its place)."""
    return {**params, "quantize": "none", "double_quant": False, "compute_dtype": None}


def is_quantized_linear(module: torch.nn.Module) -> bool:
    """True for a bitsandbytes 4-bit or 8-bit linear layer."""
    import bitsandbytes as bnb

    return isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def quantized_linears(model: torch.nn.Module):
    """(name, module) of every bitsandbytes 4-bit or 8-bit linear layer."""
    return ((name, module) for name, module in model.named_modules() if is_quantized_linear(module))


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


@torch.no_grad()
def merge_error(model: torch.nn.Module) -> float | None:
    """What merging the adapter into its quantized base would lose, relative to the adapter's effect:
    sqrt(sum ||W_merged - W_adapted||^2 / sum ||W_adapted - W_base||^2) over the adapted quantized layers.

    Each layer's effective weights are read by feeding it the identity matrix (so any adapter, LoRA, HiRA or
    DoRA, is measured as it computes), before and after merging a copy of it: merging dequantizes, adds the
    update and re-quantizes. None where no adapted layer is quantized or the adapter has no effect yet.

    Computed in fp32 whatever the run's precision: the copy dequantizes to float32 and its adapter weights are
    fp32, so the value is the merge's own rounding, not a bf16 forward's (whose noise would be reported as lost
    by a bf16 run and not by an fp32 one)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    lost = effect = 0.0
    for _, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        base = module.get_base_layer()
        if not is_quantized_linear(base):
            continue
        layer = copy.deepcopy(module).eval()
        _in_fp32(layer)
        eye = torch.eye(base.in_features, device=base.weight.device)
        plain = layer.get_base_layer()(eye).float()
        adapted = layer(eye).float()
        with warnings.catch_warnings():  # PEFT warns that merging into k-bit weights rounds: measured here
            warnings.simplefilter("ignore", UserWarning)
            layer.merge()
        merged = layer(eye).float()
        lost += float((merged - adapted).pow(2).sum())
        effect += float((adapted - plain).pow(2).sum())
    return (lost / effect) ** 0.5 if effect > 0 else None


def _in_fp32(layer: torch.nn.Module) -> None:
    """A (copied) adapted quantized layer computing in fp32: its 4-bit base dequantizes to float32, and its
    full-precision weights (the adapter's) are cast; packed weights stay as stored."""
    for module in layer.modules():
        if hasattr(module, "compute_dtype"):  # bitsandbytes Linear4bit
            module.compute_dtype = torch.float32
    with torch.no_grad():
        for p in layer.parameters():
            if p.dtype in (torch.float16, torch.bfloat16) and type(p).__name__ not in ("Params4bit", "Int8Params"):
                p.data = p.data.float()
