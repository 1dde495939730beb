"""Sparse LoRA: LoRA whose adapters are made sparse, in three variants registered as separate methods.

- ``sparse_lora_l1``: an L1 penalty on lora_A and lora_B pushes weights towards zero; after training,
  weights with |w| <= zero_threshold are set to exactly zero.
- ``sparse_lora_magnitude``: unstructured magnitude pruning of each adapter matrix on a cubic schedule
  (Zhu & Gupta, 2017); a mask re-applied after every optimizer step keeps pruned weights at zero.
- ``sparse_lora_structured``: whole rank components (row i of A with column i of B) pruned globally by
  the norm of their contribution ||B[:, i]|| * ||A[i, :]||, on the same schedule.

This is weight sparsity of the adapter, not the contextual activation sparsity of the SparseLoRA paper
(Khaki et al., 2025), which skips computation of the frozen base per token; docs/papers.md says more.
"""

from __future__ import annotations

import torch

from lorabench.methods.adapter_stats import adapter_weights, lora_pairs
from lorabench.methods.base import SettingError, register
from lorabench.methods.lora import LoRA


def cubic_sparsity(step: int, total: int, final: float, start_frac: float, end_frac: float) -> float:
    """Target sparsity after ``step`` of ``total`` optimizer steps: 0 before start, cubic ramp, final after end."""
    start, end = round(start_frac * total), max(round(end_frac * total), 1)
    if step < start:
        return 0.0
    if step >= end or end <= start:
        return final
    progress = (step - start) / (end - start)
    return final * (1.0 - (1.0 - progress) ** 3)


@register("sparse_lora_l1")
class SparseLoRAL1(LoRA):
    colour = "#ff7f0e"
    prunes_adapter = True
    figures = ("metric_vs_sparsity",)
    training_only_params = LoRA.training_only_params + ("l1_weight", "zero_threshold")
    deploys_as = "lora"  # an L1-trained LoRA adapter: the same shapes

    def regularization(self, model):
        weights = list(adapter_weights(model))
        l1 = sum(w.abs().sum() for w in weights) / sum(w.numel() for w in weights)
        return self.params["l1_weight"] * l1

    @torch.no_grad()
    def finalize(self, model):
        threshold = self.params.get("zero_threshold", 0.0)
        for w in adapter_weights(model):
            w[w.abs() <= threshold] = 0.0


class _PrunedLoRA(LoRA):
    """Shared schedule and masks; subclasses say how masks are chosen for a target sparsity."""

    # fvcore counts the dense adapter matmuls, so the pruning target and schedule do not change FLOPs.
    training_only_params = LoRA.training_only_params + ("sparsity", "prune_start_frac", "prune_end_frac")
    deploys_as = "lora"  # pruned weights are zeros in a LoRA adapter of the same shapes
    prunes_adapter = True
    figures = ("metric_vs_sparsity",)

    @classmethod
    def check_settings(cls, params: dict, shape) -> None:
        if params["prune_start_frac"] > params["prune_end_frac"]:
            raise SettingError("prune_start_frac", f"{params['prune_start_frac']} is after prune_end_frac "
                                                   f"{params['prune_end_frac']} (allowed: start <= end)")
        super().check_settings(params, shape)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.masks: dict[int, torch.Tensor] = {}  # keyed by position in adapter_weights order
        self.current_sparsity = 0.0

    def compute_masks(self, model, sparsity: float) -> list[torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def on_optimizer_step(self, model, step, total_steps):
        p = self.params
        target = cubic_sparsity(step, total_steps, p["sparsity"], p["prune_start_frac"], p["prune_end_frac"])
        if target > self.current_sparsity:
            self.masks = dict(enumerate(self.compute_masks(model, target)))
            self.current_sparsity = target
        for i, w in enumerate(adapter_weights(model)):
            if i in self.masks:
                w.mul_(self.masks[i])

    @torch.no_grad()
    def finalize(self, model):
        # A run shorter than the schedule still ends at the target sparsity.
        if self.current_sparsity < self.params["sparsity"]:
            self.masks = dict(enumerate(self.compute_masks(model, self.params["sparsity"])))
            self.current_sparsity = self.params["sparsity"]
        for i, w in enumerate(adapter_weights(model)):
            w.mul_(self.masks[i])

    def state_dict(self):
        return {"masks": self.masks, "current_sparsity": self.current_sparsity}

    def load_state_dict(self, state):
        self.masks = state["masks"]
        self.current_sparsity = state["current_sparsity"]


@register("sparse_lora_magnitude")
class SparseLoRAMagnitude(_PrunedLoRA):
    colour = "#d62728"

    def compute_masks(self, model, sparsity):
        masks = []
        for w in adapter_weights(model):
            k = int(round(sparsity * w.numel()))
            mask = torch.ones_like(w, dtype=w.dtype)
            if k:
                # Ties (e.g. lora_B still at zero) are broken by position, so exactly k weights go.
                idx = torch.argsort(w.abs().flatten(), stable=True)[:k]
                mask.view(-1)[idx] = 0
            masks.append(mask)
        return masks


@register("sparse_lora_structured")
class SparseLoRAStructured(_PrunedLoRA):
    colour = "#9467bd"

    def compute_masks(self, model, sparsity):
        pairs = list(lora_pairs(model))
        scores = torch.cat([b.norm(dim=0) * a.norm(dim=1) for _, a, b in pairs])
        k = int(round(sparsity * scores.numel()))
        keep = torch.ones_like(scores)
        if k:
            keep[torch.argsort(scores, stable=True)[:k]] = 0
        masks, offset = [], 0
        for _, a, b in pairs:
            r = a.shape[0]
            comp = keep[offset : offset + r]
            offset += r
            masks.append(comp[:, None].expand_as(a).to(a.dtype).clone())  # rows of A
            masks.append(comp[None, :].expand_as(b).to(b.dtype).clone())  # columns of B
        return masks


