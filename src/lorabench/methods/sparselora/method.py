"""SparseLoRA (Khaki et al., 2025): LoRA trained with contextual sparsity of the frozen base's FFN and,
optionally, attention.

After a dense warm-up, every training batch runs each sparse layer's FFN on only the channels a rank-r SVD
predictor expects to matter (lorabench.methods.sparselora.ffn), and with ``attn_sparsity`` each attention head on only
its predicted channels (lorabench.methods.sparselora.attention), which shrinks the base's forward and input-gradient
matmuls. The adapters are ordinary dense LoRA: evaluation, saving, merging and deployment are LoRA's, so
inference costs the same as LoRA and only training is faster.

This is a different thing from the ``sparse_lora_*`` methods, which make the adapter weights sparse and save
no computation (docs/papers.md).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from lorabench.methods.base import SettingError, register
from lorabench.methods.lora import LoRA
from lorabench.methods.sparselora.attention import ATTN_MAPS, AttnSparsity
from lorabench.methods.sparselora.ffn import FFN_MAPS, FFNSparsity, find_blocks
from lorabench.methods.sparselora.predictors import compute_predictors, load_predictors
from lorabench.methods.sparselora.settings import layer_sparsities


@register("sparselora")
class SparseLoRA(LoRA):
    colour = "#e377c2"
    figures = ("sparselora_speed",)
    # Evaluation runs dense, so these change training only, not the deployed model (efficiency jobs).
    training_only_params = LoRA.training_only_params + ("ffn_sparsity", "attn_sparsity", "dense_layers",
                                                        "warmup_frac", "predictor_rank", "predictor")
    deploys_as = "lora"  # it saves, merges and deploys a plain LoRA adapter
    #: The predictor file this method reads (the predictor rule writes it; computed in process if absent).
    uses_predictor = True

    @classmethod
    def check_settings(cls, params: dict, shape) -> None:
        """A channel map for the architecture (an attention map too where attn_sparsity skips channels), layer
        settings that fit the model, and a predictor rank within the smallest side of the projections it
        approximates (the FFN's up-projections, and q, k, v)."""
        super().check_settings(params, shape)
        if shape is None:
            return
        if shape.model_type not in FFN_MAPS:
            raise SettingError("", f"architecture '{shape.model_type}' has no FFN channel map; sparselora supports "
                                   f"{', '.join(sorted(FFN_MAPS))} (add one in lorabench.methods.sparselora.ffn)")
        if shape.num_layers is None or shape.hidden is None or shape.intermediate is None:
            return
        layer_sparsities(params, shape.num_layers)
        if any(layer_sparsities(params, shape.num_layers, "attn_sparsity")) and shape.model_type not in ATTN_MAPS:
            raise SettingError("attn_sparsity", f"architecture '{shape.model_type}' has no attention channel map; "
                               f"attn_sparsity supports {', '.join(sorted(ATTN_MAPS))} (set it to 0, or add a map "
                               "in lorabench.methods.sparselora.attention)")
        if params["predictor_rank"] > shape.smallest_width:
            raise SettingError("predictor_rank", f"{params['predictor_rank']} exceeds the smallest side "
                               f"{shape.smallest_width} of the projections the predictor approximates; "
                               f"allowed: 1..{shape.smallest_width}")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ffn_sparsity: FFNSparsity | None = None
        self.attn_sparsity: AttnSparsity | None = None  # only where attn_sparsity skips channels somewhere
        self.warmup_steps = 0
        self.summary: dict = {}

    # --- training hooks -------------------------------------------------------------------------
    def on_train_start(self, model, step: int, total_steps: int, calibration) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        model_type = base.config.model_type
        path = self.inputs.get("predictor")
        if path:  # the predictor rule's file (the pipeline)
            predictors = load_predictors(path)
        else:  # computed here, the same way (tests, benchmarks)
            calibrated = self.params["predictor"] == "calibrated"
            predictors = compute_predictors(base, model_type, self.params["predictor_rank"],
                                            calibration() if calibrated else None)
        num_layers = len(find_blocks(base, FFN_MAPS[model_type]))
        self.ffn_sparsity = FFNSparsity(base, model_type, layer_sparsities(self.params, num_layers), predictors)
        attn = layer_sparsities(self.params, num_layers, "attn_sparsity")
        if any(attn):
            self.attn_sparsity = AttnSparsity(base, model_type, attn, predictors)
        self.warmup_steps = math.ceil(self.params["warmup_frac"] * total_steps)
        self._set_sparse(step >= self.warmup_steps)

    def _installed(self) -> list:
        return [s for s in (self.ffn_sparsity, self.attn_sparsity) if s is not None]

    def _set_sparse(self, sparse: bool) -> None:
        for part in self._installed():
            part.sparse = sparse

    def on_optimizer_step(self, model, step: int, total_steps: int) -> None:
        self._set_sparse(step >= self.warmup_steps)

    def finalize(self, model) -> None:
        if self.ffn_sparsity is not None:
            s = self.ffn_sparsity
            sparse_layers = [x for x in s.sparsities if x > 0]
            a = self.attn_sparsity
            self.summary = {
                "ffn_sparsity_mean": sum(s.sparsities) / len(s.sparsities),
                "ffn_sparse_layers": len(sparse_layers),
                "ffn_matmul_fraction": s.matmul_fraction(),
                "attn_sparsity_mean": 0.0 if a is None else sum(a.sparsities) / len(a.sparsities),
                "attn_sparse_layers": 0 if a is None else sum(x > 0 for x in a.sparsities),
                "attn_matmul_fraction": 1.0 if a is None else a.matmul_fraction(),
                "dense_warmup_steps": self.warmup_steps,
                "predictor_rank": self.params["predictor_rank"],
                "predictor": self.params["predictor"],
            }
            for part in self._installed():
                part.remove()  # the trained model is plain LoRA again: evaluated and saved dense
            self.ffn_sparsity = self.attn_sparsity = None

    # --- what one step computes (train_flops) ---------------------------------------------------
    def compute_phases(self) -> tuple[str, ...]:
        return ("dense", "sparse")

    def compute_phase(self) -> str:
        return "sparse" if self.ffn_sparsity is not None and self.ffn_sparsity.sparse else "dense"

    @contextmanager
    def computing(self, phase: str):
        was = self.ffn_sparsity.sparse
        self._set_sparse(phase == "sparse")
        try:
            yield
        finally:
            self._set_sparse(was)

    def report(self, model: torch.nn.Module) -> dict:
        return {**super().report(model), **self.summary}
