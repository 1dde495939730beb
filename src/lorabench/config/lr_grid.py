"""A learning-rate sweep in the config: ``lr_grid`` maps a ``methods`` entry to the rates to try, and each rate
becomes a variant of that entry (``lora`` at 3e-4 is ``lora_lr3e-4``) before any job is planned. The choice
among them is lorabench.analysis.lr_choice's."""

from __future__ import annotations


def lr_tag(lr: float) -> str:
    """A learning rate as a name part without dots: 3e-4 -> '3e-4', 2.5e-5 -> '2p5e-5'."""
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa.replace('.', 'p')}e{int(exponent)}"


def grid_variants(lr_grid: dict[str, list[float]]) -> dict[str, tuple[str, float]]:
    """Variant name -> (swept entry, learning rate), in the grid's order."""
    return {f"{entry}_lr{lr_tag(lr)}": (entry, lr) for entry, rates in lr_grid.items() for lr in rates}


def expand_grid(methods: dict, lr_grid: dict[str, list[float]]) -> dict:
    """``methods`` with each swept entry replaced by one variant per rate (same settings, its own ``lr``)."""
    out = {name: params for name, params in methods.items() if name not in lr_grid}
    for variant, (entry, lr) in grid_variants(lr_grid).items():
        params = methods[entry]
        out[variant] = {**params, "type": params.get("type", entry), "lr": lr}
    return out
