"""Full fine-tuning: every weight trainable. The reference row the PEFT papers compare against."""

from __future__ import annotations

from pathlib import Path

import torch

from lorabench.methods.base import Method, register


@register("full_ft")
class FullFineTuning(Method):
    colour = "#000000"
    saves_adapter = False

    def build(self, loader) -> torch.nn.Module:
        model = self.load_base(loader)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def load_trained(self, loader, saved_dir: str | Path) -> torch.nn.Module:
        return loader.load(path=str(saved_dir))
