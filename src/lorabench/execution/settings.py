"""The training settings every method shares, as the trainer reads them."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrainingSettings:
    """Settings shared by every method, so that runs differ only in the method (and its learning rate)."""

    epochs: int
    """Passes over the training subset."""
    batch_size: int
    """Examples per micro-batch."""
    grad_accum_steps: int
    """Micro-batches per optimizer step."""
    warmup_ratio: float
    """Fraction of optimizer steps with linear warmup; linear decay to zero afterwards."""
    weight_decay: float
    """AdamW weight decay."""
    max_grad_norm: float
    """Gradient clipping norm."""
    subset_seed: int
    """Seed of the fixed data subsets (identical for every run)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; None runs every epoch."""
    mlm_probability: float = 0.15
    """Masking rate for masked-LM training and evaluation."""
    checkpoint_every: int = 0
    """Optimizer steps between resumable checkpoints; 0 disables them."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them (QLoRA's recipe):
    less training memory for every method alike, at the cost of a second forward through each layer."""

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
