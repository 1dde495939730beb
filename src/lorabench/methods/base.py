"""The method interface and registry. Defaults are the plain case; each method overrides what differs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from lorabench.loading.quantization import Quantization
from lorabench.runtime.memory import managed_bytes
from lorabench.runtime.precision import FP32, Precision

METHODS: dict[str, type["Method"]] = {}


def register(name: str):
    """Register a Method class under the type name configs write (``type: lora``); the registry is the one list
    of method types: the workflow, the checks and the analysis's view of a type (``traits``) all read it."""
    def deco(cls):
        METHODS[name] = cls
        cls.type_name = name
        return cls

    return deco


class SettingError(ValueError):
    """A method's setting does not fit its other settings or the model; ``key`` is the setting at fault (the
    config check turns it into the config key, per model where a ``by_model`` override set it)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


#: PEFT's name of the one adapter every method here trains: each adapter weight has it as a path segment
#: (lora_A.default.weight, vera_lambda_b.default, hada_w1_a.default), whatever the PEFT method.
ADAPTER_NAME = "default"


def count_parameters(model: torch.nn.Module, head_modules: list[str]) -> dict[str, int]:
    """Trainable parameters split into adapter weights and the task head (modules_to_save copies)."""
    adapter = head = other = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        if any(f".{h}." in f".{name}" for h in head_modules):  # first: PEFT's head copies hold 'default' too
            head += n
        elif ADAPTER_NAME in name.split("."):
            adapter += n
        else:
            other += n
    # 4-bit weights are packed two per byte; count the logical elements so totals compare across methods.
    total = 0
    for p in model.parameters():
        total += p.numel() * (2 if getattr(p, "quant_state", None) is not None or type(p).__name__ == "Params4bit" else 1)
    return {
        "trainable_params": adapter + head + other,
        "adapter_params": adapter,
        "head_params": head,
        "other_trainable_params": other,
        "total_params": total,
    }


class Method:
    """Base class; subclasses are registered with ``@register("name")``."""

    #: False for the untrained base: the job evaluates the model without a training loop.
    trains = True
    #: True when the saved folder is a PEFT adapter (loaded on top of the base), False for a full model.
    saves_adapter = True
    #: True when the adapter can be merged into the base weights for deployment (latency measured both ways).
    mergeable = False
    #: Config keys that shape training only, not the model's graph: FLOPs do not depend on them.
    training_only_params: tuple[str, ...] = ("lr", "lr_reason", "optimizer")
    #: The registered name (set by ``register``).
    type_name: str = ""
    #: The registered type whose deployed model this type's is, given the same architecture settings (its own
    #: settings all train-only): LoRA's, for the pruned variants and SparseLoRA, which save a plain LoRA adapter
    #: of the same shapes. The efficiency job (latency, throughput, size, inference memory, FLOPs) then runs once
    #: for both; None: its own graph.
    deploys_as: str | None = None
    #: The registered type this one is a preset of, compared and drawn as its variant (QLoRA: LoRA on a 4-bit
    #: base); None: its own family.
    preset_of: str | None = None
    #: True for types whose variants differ in the sparsity of their adapter weights: the figures and the
    #: discussion put them on that axis, against the dense LoRA with the same adapter.
    prunes_adapter = False
    #: Figures only this type's runs have (beside every config's figures, lorabench.analysis.figures.FIGURES).
    figures: tuple[str, ...] = ()
    #: The type's colour in every figure (None: plotnine's palette picks one).
    colour: str | None = None

    def __init__(self, name: str, params: dict, target_modules: list[str], precision: Precision = FP32,
                 inputs: dict | None = None):
        self.name = name
        #: Files the method reads besides the model and data, by role (SparseLoRA: {"predictor": path}).
        self.inputs = dict(inputs or {})
        self.params = dict(params)
        self.target_modules = target_modules
        self.precision = precision
        #: How the frozen base is stored (the quantize axis; only adapter types accept the setting).
        self.quantization = Quantization.from_params(self.params)
        self._optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def precision_conflict(cls, params: dict, precision: str) -> str | None:
        """Why this method cannot run with ``params`` in ``precision`` (fp32, bf16 or fp16), or None if it can.

        Checked for every configured method before any job runs. Every method here trains in all three
        precisions; a method refuses the combinations its own settings contradict (a 4-bit compute dtype)."""
        return Quantization.from_params(params).precision_conflict(precision)

    @classmethod
    def check_settings(cls, params: dict, shape) -> None:
        """Raise SettingError where ``params`` (schema-valid, defaults filled, merged for one model) contradict
        each other or the model's ``shape`` (lorabench.loading.shapes.ModelShape; None where no snapshot tells
        it). Checked for every configured method and model before any job runs; the plain case has nothing."""

    @classmethod
    def figures_of(cls, params: dict) -> tuple[str, ...]:
        """The figures a config entry of this type adds: the type's own, and the bits figure where the entry
        quantizes its base (the quantize axis is every adapter type's)."""
        quantized = Quantization.from_params(params).quantized and "bits" not in cls.figures
        return cls.figures + (("bits",) if quantized else ())

    @classmethod
    def traits(cls) -> dict:
        """What the analysis knows of this type (it never imports the methods, which need torch): its family,
        whether it trains, whether it prunes its adapter, its colour. The workflow passes these to the report
        and figure jobs."""
        return {"family": cls.preset_of or cls.type_name, "untrained": not cls.trains,
                "prunes_adapter": cls.prunes_adapter, "colour": cls.colour}

    # --- model ---------------------------------------------------------------------------------
    def build(self, loader) -> torch.nn.Module:
        """Load the base with ``loader`` and make it trainable the method's way."""
        raise NotImplementedError

    def load_trained(self, loader, saved_dir: str | Path) -> torch.nn.Module:
        """Load what ``save`` wrote, ready for evaluation."""
        from peft import PeftModel

        return PeftModel.from_pretrained(self.load_base(loader), str(saved_dir))

    def load_base(self, loader) -> torch.nn.Module:
        return loader.load()

    def save(self, model: torch.nn.Module, out_dir: str | Path) -> None:
        model.save_pretrained(str(out_dir), safe_serialization=True)

    # --- training hooks (no-ops by default) -----------------------------------------------------
    def on_train_start(self, model: torch.nn.Module, step: int, total_steps: int,
                       calibration: Callable[[], list[dict]]) -> None:
        """Called once before the training loop (``step`` > 0 when resuming from a checkpoint).
        ``calibration()`` returns a few fixed training batches, for methods that fit something to the data."""

    def make_optimizer(self, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """The config's ``optimizer``: torch's AdamW, or bitsandbytes' paged AdamW (QLoRA's)."""
        if self.params["optimizer"] == "paged_adamw":  # every type has the setting, defaulted by the schema
            import bitsandbytes as bnb

            self._optimizer = bnb.optim.PagedAdamW(params, lr=lr, weight_decay=weight_decay)
        else:
            self._optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        return self._optimizer

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Restore a checkpoint's optimizer state. bitsandbytes' ``load_state_dict`` brings paged state back as
        ordinary device tensors, so a resumed paged optimizer would run unpaged: its state goes back into paged
        buffers, through the optimizer's own allocator (same threshold, registered with its page manager)."""
        if not getattr(optimizer, "is_paged", False):
            optimizer.load_state_dict(state)
            return
        optimizer.load_state_dict(state, move_to_device=False)  # not onto the GPU first: that is the peak saved
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    for key, value in list(optimizer.state.get(p, {}).items()):
                        if not torch.is_tensor(value):
                            continue
                        if key in ("state1", "state2"):
                            buffer = optimizer.get_state_buffer(p, dtype=value.dtype)
                            buffer.copy_(value.reshape(buffer.shape))
                            optimizer.state[p][key] = buffer
                        else:  # quantization constants: on the device, as a fresh step would put them
                            optimizer.state[p][key] = value.to(p.device)

    def optimizer_ran(self) -> str:
        """The optimizer as it ran, read from its state: bitsandbytes runs its paged optimizers unpaged on CPU,
        and pages only state tensors of 1e5 elements or more."""
        opt = self._optimizer
        if opt is None:
            return ""
        name = f"{type(opt).__module__.split('.')[0]}.optim.{type(opt).__name__}"
        if getattr(opt, "is_paged", False):
            if getattr(opt, "_cpu_paged_warned", False):
                name += " (unpaged fallback on CPU)"
            elif opt.state and not managed_bytes(opt):
                name += " (no state paged: every tensor under bitsandbytes' 1e5-element threshold)"
            else:
                name += " (paged)"
        return name

    def regularization(self, model: torch.nn.Module) -> torch.Tensor | None:
        """Extra loss added to the task loss (e.g. L1 on adapters); None for none."""
        return None

    def on_gradients(self, model: torch.nn.Module, step: int, total_steps: int) -> None:
        """Called after optimizer step ``step`` while its gradients still exist (AdaLoRA's importance scores)."""

    def on_optimizer_step(self, model: torch.nn.Module, step: int, total_steps: int) -> None:
        """Called after every optimizer step (pruning schedules, masks)."""

    def finalize(self, model: torch.nn.Module) -> None:
        """Called once after the last optimizer step, before saving (e.g. reach the final sparsity)."""

    def state_dict(self) -> dict:
        """Method state a resumable checkpoint must carry (e.g. pruning masks)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # --- what one training step computes (train_flops) ------------------------------------------
    def compute_phases(self) -> tuple[str, ...]:
        """Kinds of training step that compute different amounts (SparseLoRA: dense warm-up, sparse)."""
        return ("dense",)

    def compute_phase(self) -> str:
        """The kind of the next training step."""
        return "dense"

    @contextmanager
    def computing(self, phase: str):
        """Make the steps inside compute as ``phase`` does (to count one step of each kind)."""
        yield

    # --- reporting ------------------------------------------------------------------------------
    def report(self, model: torch.nn.Module) -> dict:
        """Method-specific columns for the summary (sparsity, bits of the base weights, optimizer)."""
        q = self.quantization
        return {"optimizer": self.optimizer_ran(), "base_weight_bits": base_weight_bits(model),
                "quantize": q.kind, "double_quant": q.double_quant}


def base_weight_bits(model: torch.nn.Module) -> int:
    """Bits per weight of the frozen base, read from the loaded Linear layers (not from the config)."""
    bits = set()
    for module in model.modules():
        w = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or w is None:
            continue
        if type(w).__name__ == "Params4bit":
            bits.add(4)
        elif w.dtype == torch.int8:
            bits.add(8)
        else:
            bits.add(torch.finfo(w.dtype).bits)
    return min(bits) if bits else 32
