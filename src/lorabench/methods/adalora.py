"""AdaLoRA (Zhang et al., ICLR 2023) through PEFT: LoRA in SVD form, W + B diag(E) A, whose rank budget is
re-allocated during training. Each layer starts at ``init_r``; after a warm-up the total budget shrinks on a
cubic schedule to ``target_r`` per layer on average, keeping the singular values whose importance (gradient
times weight, smoothed) is highest, then the final ranks train on.

PEFT needs three things it does not do by itself, done here: the schedule's step counts (known only when
training starts), ``update_and_allocate`` after every optimizer step while gradients are still there, and the
orthogonality penalty, which PEFT adds to ``outputs.loss`` even in evaluation; it is added as this method's
regularization instead, so the logged task loss and every evaluation are free of it."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from lorabench.methods.adapter import AdapterMethod, head_modules_present
from lorabench.methods.base import SettingError, register

# A placeholder schedule for PEFT's constructor, which requires one; the real one is set at the start of training.
_UNSET_TOTAL_STEPS = 10**9


def schedule(total_steps: int, tinit_frac: float, tfinal_frac: float) -> tuple[int, int] | None:
    """(tinit, tfinal) steps for a run of ``total_steps``, or None for a run too short to reallocate.

    PEFT scores importance on the steps before ``total - tfinal`` and fixes the final ranks at that step, so
    at least one scoring step must come first (total - tfinal >= 2), and the warm-up must end before it
    (tinit < total - tfinal); the fractions are shortened until both hold."""
    if total_steps < 2:
        return None
    tinit, tfinal = round(tinit_frac * total_steps), round(tfinal_frac * total_steps)
    tfinal = min(tfinal, total_steps - 2)
    tinit = min(tinit, total_steps - tfinal - 1)
    return tinit, tfinal


@contextmanager
def _rank_pattern_warnings_silenced():
    """PEFT warns, saving a layer pruned to rank 0, that its empty A and B look like unsharded ZeRO-3 tensors,
    and, loading, that rank_pattern keys match no LoRA module; both are AdaLoRA's normal state (the reload
    is tested to reproduce the logits)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape")
        warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
        yield


def svd_layers(model: torch.nn.Module):
    """(name, layer) of every AdaLoRA SVD layer (they hold the singular values lora_E)."""
    for name, module in model.named_modules():
        e = getattr(module, "lora_E", None)
        if isinstance(e, torch.nn.ParameterDict) and "default" in e:
            yield name, module


@torch.no_grad()
def layer_ranks(model: torch.nn.Module) -> dict[str, int]:
    """The rank each adapted layer computes with: its non-zero singular values (pruned ones are zeroed)."""
    return {name: int((layer.lora_E["default"] != 0).sum()) for name, layer in svd_layers(model)}


@register("adalora")
class AdaLoRA(AdapterMethod):
    colour = "#17becf"
    figures = ("adalora_ranks",)
    training_only_params = AdapterMethod.training_only_params + (
        "target_r", "tinit_frac", "tfinal_frac", "delta_t", "orth_reg_weight")
    rank_settings = ("init_r",)

    @classmethod
    def check_settings(cls, params: dict, shape) -> None:
        if params["target_r"] > params["init_r"]:
            raise SettingError("target_r", f"{params['target_r']} exceeds init_r {params['init_r']}; AdaLoRA prunes "
                                           "ranks from init_r down to target_r (allowed: 1..init_r)")
        super().check_settings(params, shape)

    def peft_config(self, loader, model):
        from peft import AdaLoraConfig

        p = self.params
        return AdaLoraConfig(
            init_r=p["init_r"], target_r=p["target_r"], lora_alpha=p["alpha"], lora_dropout=p["dropout"],
            total_step=_UNSET_TOTAL_STEPS, deltaT=p["delta_t"],
            orth_reg_weight=0.0,  # added by regularization() below, outside the model's outputs.loss
            target_modules=p.get("target_modules") or self.target_modules,
            task_type=loader.peft_task_type,
            modules_to_save=head_modules_present(model, loader.head_modules) or None,
        )

    def save(self, model, out_dir):
        with _rank_pattern_warnings_silenced():
            super().save(model, out_dir)

    def load_trained(self, loader, saved_dir):
        with _rank_pattern_warnings_silenced():
            return super().load_trained(loader, saved_dir)

    def on_train_start(self, model, step, total_steps, calibration):
        config = model.peft_config["default"]  # the object PEFT's rank allocator reads at every step
        config.total_step = total_steps
        planned = schedule(total_steps, self.params["tinit_frac"], self.params["tfinal_frac"])
        #: False for a run of one optimizer step: no importance is scored, the ranks stay init_r.
        self.reallocates = planned is not None
        config.tinit, config.tfinal = planned or (0, 0)
        self._model = model
        restored = getattr(self, "_restored", None)
        if restored:  # resuming: the importance averages and the ranks allocated so far
            allocator = model.base_model.rankallocator
            allocator.ipt, allocator.exp_avg_ipt = restored["ipt"], restored["exp_avg_ipt"]
            allocator.exp_avg_unc = restored["exp_avg_unc"]
            config.rank_pattern = restored["rank_pattern"]

    def on_gradients(self, model, step, total_steps):
        # Importance is gradient x weight: PEFT reads the gradients of the step just taken.
        if self.reallocates:
            model.base_model.update_and_allocate(step)

    def regularization(self, model):
        """PEFT's orthogonality penalty on A and B (mean over matrices of ||P P^T - I||_F), times its weight."""
        weight = self.params["orth_reg_weight"]
        if not weight:
            return None
        terms = []
        for _, layer in svd_layers(model):
            a, b = layer.lora_A["default"], layer.lora_B["default"]
            eye = torch.eye(a.shape[0], device=a.device, dtype=a.dtype)
            terms.append(torch.linalg.matrix_norm(a @ a.T - eye))
            terms.append(torch.linalg.matrix_norm(b.T @ b - eye))
        return weight * torch.stack(terms).mean()

    def state_dict(self):
        allocator = getattr(getattr(self, "_model", None), "base_model", None)
        allocator = getattr(allocator, "rankallocator", None)
        if allocator is None:
            return {}
        return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
                "rank_pattern": self._model.peft_config["default"].rank_pattern}

    def load_state_dict(self, state):
        self._restored = state

    def report(self, model):
        ranks = layer_ranks(model)
        values = list(ranks.values())
        out = {**super().report(model), "adalora_layer_ranks": ranks,
               "adalora_reallocated": getattr(self, "reallocates", False)}
        if values:
            out.update(adalora_rank_mean=sum(values) / len(values), adalora_rank_min=min(values),
                       adalora_rank_max=max(values), adalora_init_r=self.params["init_r"])
        return out
