"""Mixed precision, one axis for every method: autocast for the forward pass and the loss, fp32 weights and
optimizer state, a GradScaler for fp16. Evaluation and inference timing run in the same precision."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

#: Config values of ``precision``; ``auto`` is resolved per job, on the device that runs it.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run natively: CUDA with bf16 support, a CPU with AVX512-BF16 or AMX-BF16.

    Elsewhere torch emulates bf16 on the CPU, which is slower than fp32, so ``auto`` stays in fp32 there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        caps = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):  # an older or other build of torch: do not guess
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


@dataclass(frozen=True)
class Precision:
    """The precision one job runs in, resolved from the config's ``precision`` on its device."""

    name: str
    """Resolved precision: fp32, bf16 or fp16 (never auto)."""
    requested: str
    """What the config asked for (auto, fp32, bf16 or fp16)."""
    device_type: str
    """cpu or cuda: the autocast and GradScaler device."""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """dtype of autocast regions; None for fp32 (no autocast)."""
        return _AUTOCAST_DTYPES[self.name]

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype a quantized base computes in (bitsandbytes' compute dtype) unless a method overrides it."""
        return self.autocast_dtype or torch.float32

    def autocast(self):
        """Context for the forward pass and the loss; a no-op in fp32."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (whose range underflows small gradients); a pass-through otherwise."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


#: Plain fp32: no autocast, no loss scaling (on any device, since neither is enabled). The default where a
#: caller passes no precision.
FP32 = Precision(name="fp32", requested="fp32", device_type="cpu")


def resolve_precision(requested: str, device: torch.device) -> Precision:
    if requested not in PRECISIONS:
        raise ValueError(f"precision '{requested}' is not one of {', '.join(PRECISIONS)}")
    name = requested
    if requested == "auto":
        name = "bf16" if native_bf16(device) else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("config 'precision: bf16' but this GPU has no bf16 support; use 'auto', 'fp16' or 'fp32'")
    return Precision(name=name, requested=requested, device_type=device.type)
