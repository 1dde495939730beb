"""Mixed precision, one axis for every method: autocast for the forward pass and the loss, fp32 weights and
optimizer state, a GradScaler for fp16. Evaluation and inference timing run in the same precision.

``auto`` means bf16 only where the device computes it natively: a GPU of compute capability 8.0 or more
(Ampere on), a CPU with AVX512-BF16 or AMX-BF16. Other GPUs (V100, T4: 7.x) get fp16 with loss scaling, since
torch emulates bf16 there (``torch.cuda.is_bf16_supported()`` says True by default, counting emulation); other
CPUs get fp32, since emulated bf16 runs slower than fp32 (docs/measurements/precision.md)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

#: Config values of ``precision``; ``auto`` is resolved per job, on the device that runs it.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The first CUDA compute capability with bf16 tensor cores (Ampere, sm_80).
NATIVE_BF16_CAPABILITY = (8, 0)


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The GPU's compute capability. A seam: tests of the resolution set it for GPUs this machine lacks."""
    return tuple(torch.cuda.get_device_capability(device))


def cpu_capabilities() -> dict:
    """The CPU features torch dispatches on (avx512_bf16, amx_bf16, ...). A seam, like ``cuda_capability``."""
    try:
        return torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):  # an older or other build of torch: do not guess
        return {}


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run natively: CUDA at capability 8.0 or more, a CPU with AVX512-BF16 or AMX-BF16."""
    if device.type == "cuda":
        return cuda_capability(device) >= NATIVE_BF16_CAPABILITY
    caps = cpu_capabilities()
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
    reason: str = ""
    """Why this precision ran (the summary's ``precision_reason``)."""

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
FP32 = Precision(name="fp32", requested="fp32", device_type="cpu", reason="fp32: the default of a direct call")


def _auto(device: torch.device) -> tuple[str, str]:
    """(precision, why) that ``auto`` resolves to on ``device``."""
    if device.type == "cuda":
        major, minor = cuda_capability(device)
        if native_bf16(device):
            return "bf16", f"auto: compute capability {major}.{minor} computes bf16 natively"
        return "fp16", (f"auto: compute capability {major}.{minor} has no native bf16 (8.0 or more), so fp16 with "
                        "loss scaling")
    if native_bf16(device):
        return "bf16", "auto: the CPU has AVX512-BF16 or AMX-BF16 (native bf16)"
    return "fp32", ("auto: the CPU has no AVX512-BF16 or AMX-BF16, so bf16 would be emulated, slower than fp32 "
                    "(a run takes about 2x as long as on a CPU with it)")


def resolve_precision(requested: str, device: torch.device) -> Precision:
    if requested not in PRECISIONS:
        raise ValueError(f"config key 'precision': '{requested}' is not one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        name, reason = _auto(device)
    else:
        name, reason = requested, f"set by the config (precision: {requested})"
    if name == "bf16" and device.type == "cuda" and not native_bf16(device):
        major, minor = cuda_capability(device)
        raise RuntimeError(f"config key 'precision': bf16, but this GPU (compute capability {major}.{minor}) has no "
                           "native bf16 and torch would emulate it, slowly; set precision to 'auto' (fp16 with loss "
                           "scaling here), 'fp16' or 'fp32'")
    return Precision(name=name, requested=requested, device_type=device.type, reason=reason)
