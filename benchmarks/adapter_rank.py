"""The effective rank of trained LoRA adapters, as each run's report computes it, against the rank of the full
B A product that it computed before (docs/measurements/default-run.md, 2026-12-07 (adapter rank)).

    .venv/bin/python benchmarks/adapter_rank.py results [--repeats 3]

For every saved LoRA adapter of seed 0 under ``results/runs``: both computations interleaved ``--repeats``
times in this process, their mean seconds, and whether their ranks agree layer by layer. Last line:
``adapters=N ranks_equal=yes|no full_s=X factored_s=Y`` (summed over the adapters, one pass each)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from lorabench.methods.adapter_stats import _product_rank


def pairs(adapter: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    weights = load_file(adapter)
    return [(weights[k.replace("lora_A", "lora_B")].float(), w.float()) for k, w in weights.items() if "lora_A" in k]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    adapters = sorted(args.results.glob("runs/*/*/seed0/model/adapter_model.safetensors"))
    total_full = total_factored = 0.0
    equal = True
    for adapter in adapters:
        layers = pairs(adapter)
        if not layers:
            continue
        full_s = factored_s = 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            full = [int(torch.linalg.matrix_rank(b @ a)) for b, a in layers]
            full_s += time.perf_counter() - start
            start = time.perf_counter()
            factored = [_product_rank(b, a) for b, a in layers]
            factored_s += time.perf_counter() - start
            equal &= full == factored
        total_full += full_s / args.repeats
        total_factored += factored_s / args.repeats
        print(f"{adapter.parent.parent.relative_to(args.results / 'runs')}: {len(layers)} layers, full "
              f"{full_s / args.repeats:.3f} s, factored {factored_s / args.repeats:.3f} s, mean rank "
              f"{sum(factored) / len(factored):.2f}")
    print(f"adapters={len(adapters)} ranks_equal={'yes' if equal else 'no'} full_s={total_full:.2f} "
          f"factored_s={total_factored:.3f}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
