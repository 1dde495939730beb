"""The untrained base: the pretrained model evaluated as it is, on the same windows and examples as every
method. It is the row that says whether fine-tuning moved the metric at all (on a classification task its head
is freshly initialized, so it reads as the chance level)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorabench.methods.base import Method, register

MARKER = "untrained_base.json"


@register("base")
class UntrainedBase(Method):
    trains = False
    saves_adapter = False

    def build(self, loader) -> torch.nn.Module:
        model = self.load_base(loader)
        model.requires_grad_(False)
        return model

    def save(self, model: torch.nn.Module, out_dir: str | Path) -> None:
        # Nothing was trained: a pointer to the base, not a second copy of its weights.
        (Path(out_dir) / MARKER).write_text(json.dumps({"untrained": True, "base": type(model).__name__}))

    def load_trained(self, loader, saved_dir: str | Path) -> torch.nn.Module:
        if not (Path(saved_dir) / MARKER).exists():
            raise FileNotFoundError(f"{saved_dir} holds no {MARKER}: it was not written by the base method")
        return self.build(loader)
