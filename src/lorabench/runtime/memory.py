"""Memory by phase: load, training, inference; and the exact bytes of what a run stores.

CPU: the kernel's high-water mark of this process's resident memory (VmHWM), reset at the start of each
phase by writing 5 to /proc/self/clear_refs, minus the resident memory once every library is imported (so
no phase is charged for the ~200 MB of imports). A phase measured ``exact`` runs with glibc's allocator
returning every freed block above 64 KiB to the kernel at once (a fixed M_MMAP_THRESHOLD): otherwise glibc
keeps freed activations for reuse and RSS climbs step after step, charging a method with the allocator's
habits. That costs page faults (a SmolLM2 step runs ~1.6x slower), so the training loop is measured exact
only on a few probe steps (``trainer.memory_probe_batches``) and runs relaxed otherwise. The allocator is
exact from the moment a ``PhaseMemory`` exists, so loading runs exact too: a relaxed load leaves its freed
temporaries as holes in the heap, which a later exact phase refills page by page without handing them back
(QLoRA's inference peak on SmolLM2 spread over 590-730 MB between processes that way; 502-505 MB without the
holes). Where the counter cannot be reset (not Linux, or a kernel that refuses), the phase peaks are NaN and
``memory_note`` says why: a peak since the process started would charge one phase with another's. GPU:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the load phase from the moment a
``PhaseMemory`` exists), plus what sits in CUDA managed memory, which the allocator never sees: bitsandbytes'
paged optimizer state (``managed_bytes``). The two are different quantities, so every peak comes with its
``kind`` (``rss`` or ``cuda_allocated``) and the analysis never compares unlike kinds. docs/methodology.md has
the details and the limits.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
_MADV_POPULATE_READ = 22  # madvise advice (linux/mman.h, Linux 5.14): fill the page tables, reading
EXACT_MMAP_THRESHOLD = 64 * 1024
# glibc's own ceiling for its dynamic threshold on 64-bit: where it settles in a long run anyway. Setting any
# value switches the dynamic adjustment off, so relaxed phases pin it there.
RELAXED_MMAP_THRESHOLD = 32 * 2**20


def import_libraries() -> None:
    """Import what any phase will import, so that the baseline taken next already holds it."""
    import datasets  # noqa: F401
    import peft  # noqa: F401  (imports bitsandbytes too)
    import transformers  # noqa: F401


def _status_kb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PhaseMemory:
    """Peak memory of one phase at a time, above the resident memory after imports."""

    def __init__(self, device: torch.device):
        import_libraries()
        self.device = device
        self.kind = "cuda_allocated" if device.type == "cuda" else "rss"
        """What the peaks measure: the CUDA allocator's bytes (plus managed memory), or resident memory."""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # the load phase starts here, not at the process's start
        else:
            _set_mmap_threshold(EXACT_MMAP_THRESHOLD)  # loading runs exact: it leaves no holes (module docstring)
        self.resettable = device.type == "cuda" or _reset_high_water_mark()
        # What start() will hand back to the kernel must not sit in the baseline either: a baseline that holds
        # freed heap would understate every later phase by that much (or make it negative).
        gc.collect()
        _malloc_trim()
        rss = _status_kb("VmRSS")
        self.baseline_mb = rss / 1024 if rss is not None else math.nan
        self.note = "" if self.resettable and rss is not None else (
            "phase peaks unavailable: cannot reset the kernel's peak-RSS counter (/proc/self/clear_refs)")

    def start(self, exact: bool = False) -> None:
        """Begin a phase: hand memory freed by earlier phases back to the kernel, then restart the peak
        counter from the current usage. ``exact``: until ``stop``, freed blocks go back to the kernel at once."""
        gc.collect()
        if exact and self.device.type != "cuda":
            _set_mmap_threshold(EXACT_MMAP_THRESHOLD)
        _malloc_trim()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            _reset_high_water_mark()

    def stop(self) -> float:
        """End a phase: its peak, with the allocator back to its fast setting."""
        peak = self.peak_mb()
        if self.device.type != "cuda":
            _set_mmap_threshold(RELAXED_MMAP_THRESHOLD)
        return peak

    def peak_mb(self) -> float:
        """Peak of the current phase: CUDA allocator peak, or CPU peak RSS above the after-imports baseline."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _status_kb("VmHWM")
        if not self.resettable or hwm is None:
            return math.nan
        return hwm / 1024 - self.baseline_mb


def managed_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of the optimizer's state in CUDA managed memory (bitsandbytes' paged optimizers on a GPU), which
    ``torch.cuda.max_memory_allocated`` does not count; 0 for any other optimizer or device. A paged buffer is
    one its page manager holds: the ``is_paged`` mark survives a copy into ordinary memory, so it is not read."""
    manager = getattr(optimizer, "page_mng", None)
    if manager is None:
        return 0
    paged = {id(t) for t in manager.paged_tensors}
    return sum(_bytes(v) for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor) and id(v) in paged)


def resident_file_pages() -> list[tuple[int, int]]:
    """The readable file-backed pages (shared libraries, their code and data) this process has resident, as
    (address, bytes) runs; [] where /proc/self/pagemap cannot be read.

    A forked child does not inherit these page-table entries (the kernel refaults them on first use), so its
    RSS starts below its parent's and every library page it uses again would count in its phase peaks, which a
    process that imported the libraries itself does not pay. ``refault_file_pages`` in the child maps them
    back before its baseline (execution/seed_chunk.py)."""
    import numpy as np

    page = os.sysconf("SC_PAGE_SIZE")
    runs = []
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
            for line in maps:
                fields = line.split()
                if len(fields) < 6 or not fields[5].startswith("/") or fields[5].startswith("/dev/") \
                        or not fields[1].startswith("r"):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                pagemap.seek(start // page * 8)
                present = (np.frombuffer(pagemap.read((end - start) // page * 8), dtype=np.uint64) >> 63) & 1
                edges = np.flatnonzero(np.diff(np.concatenate(([0], present.astype(np.int8), [0]))))
                runs += [(start + int(a) * page, int(b - a) * page) for a, b in zip(edges[::2], edges[1::2])]
    except OSError:
        return []
    return runs


def refault_file_pages(runs: list[tuple[int, int]]) -> None:
    """Map ``runs`` (from ``resident_file_pages`` in the parent) into this process's page tables again: the
    pages are in the page cache, so this reads nothing from disk."""
    page = os.sysconf("SC_PAGE_SIZE")
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for address, nbytes in runs:
        if madvise(address, nbytes, _MADV_POPULATE_READ) != 0:  # before Linux 5.14: touch each page
            for offset in range(0, nbytes, page):
                ctypes.string_at(address + offset, 1)


def _malloc_trim() -> None:
    """glibc keeps freed heap memory for reuse; without this, one phase's garbage counts in the next one's RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim, and nothing retained the same way
        pass


def _set_mmap_threshold(nbytes: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, nbytes)
    except (OSError, AttributeError):  # not glibc: its allocator has its own habits, documented as a limit
        pass


def release_checkpoint_mapping(model: torch.nn.Module) -> torch.nn.Module:
    """Copy every full-precision parameter and buffer into memory the process owns.

    transformers memory-maps safetensors checkpoints, and tensors it does not convert stay views into the
    file's pages; those pages count in RSS once touched and are never released while the model lives
    (under QLoRA the quantized layers are copies but the embeddings are not; docs/methodology.md, "Memory,
    by phase", has the size). Applied to every method alike, so no method is charged for the file mapping.
    4-bit weights are already the process's own memory."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if type(tensor).__name__ != "Params4bit":
                tensor.data = tensor.data.clone()
    return model


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def stored_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Exact bytes of the stored parameters (4-bit weights as packed, with their quantization constants; int8
    weights with their row scales),
    of the gradients of trainable parameters, and of the optimizer's state."""
    weights = 0
    for p in model.parameters():
        weights += _bytes(p)
        state = getattr(p, "quant_state", None)
        for t in (getattr(state, "absmax", None), getattr(getattr(state, "state2", None), "absmax", None)):
            weights += _bytes(t) if isinstance(t, torch.Tensor) else 0
        scales = getattr(p, "SCB", None)  # bitsandbytes Int8Params
        weights += _bytes(scales) if isinstance(scales, torch.Tensor) else 0
    out = {"param_bytes": weights,
           "grad_bytes": sum(_bytes(p) for p in model.parameters() if p.requires_grad)}
    if optimizer is not None:
        out["optimizer_state_bytes"] = sum(_bytes(v) for s in optimizer.state.values() for v in s.values()
                                           if isinstance(v, torch.Tensor))
    return out
