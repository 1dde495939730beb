"""LoRA against SparseLoRA (contextual FFN and attention sparsity): training-step time and FLOPs on the same
batches.

    .venv/bin/python benchmarks/sparselora_speed.py [--quick] [--sparsity 0.9] [--params JSON] [--precision auto]

For SmolLM2 (batch 16 x 64 tokens of WikiText-2) and MiniLM (batch 16 x 128 tokens of IMDB reviews):
- two models built alike from the same seed, one LoRA, one SparseLoRA with config.yaml's ``sparselora``
  settings (``--sparsity`` overrides ffn_sparsity, ``--params`` any of them), stepping on the same batches,
  interleaved step by step in one process (ABBA), after the dense warm-up; median and IQR of each arm's step
  time, speed-up = ratio of medians;
- FLOPs of one training step of each, counted by torch.utils.flop_counter, against the analytic saving
  (the skipped channels' forward and input-gradient multiply-adds, minus the predictor's);
- the FFN predictor's quality per layer on one batch: overlap with the oracle top-k channels (random choice
  scores 1 - sparsity) and the share of the activation's squared norm it keeps, relative to the oracle
  (the attention's is tests/test_attn_sparsity.py's).
The last line is  speedup_smollm2=X speedup_minilm=Y flops_saved=Z  (flops_saved: counted, SmolLM2).
Models and data are prepared under resources/bench/ from the snapshots (LORABENCH_SNAPSHOTS).
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch

from lorabench.config.views import method_params_on
from lorabench.execution.flops import step_flops_per_token
from lorabench.execution.settings import TrainingSettings
from lorabench.loading.data import TRAIN, Collator, calibration_batches, length_grouped_batches, load_tokenized
from lorabench.loading.models import ModelLoader
from lorabench.methods.checks import load_config
from lorabench.methods.sparselora.channels import submodule
from lorabench.runtime.device import device_name, set_threads
from lorabench.runtime.precision import resolve_precision

from common import REPO, Arm, interleaved_bare_steps, prepare, step_summary

CPU = torch.device("cpu")
CASES = {"smollm2": ("wikitext2", 64), "minilm": ("imdb", 128)}  # model -> (dataset, tokens per example)
BATCH = 16


def batches_of(tok_dir: Path, loader: ModelLoader, tokens: int, n: int) -> tuple[list[dict], list[dict]]:
    """(``n`` batches of 16 examples cut to ``tokens`` tokens, the longest training examples; the predictor's
    calibration batches, from the first training examples as in the pipeline)."""
    from transformers import AutoTokenizer

    rows = load_tokenized(tok_dir, TRAIN).to_list()
    rows = [{**r, "input_ids": r["input_ids"][:tokens]} for r in rows]
    calibration = list(rows)
    rows.sort(key=lambda r: -len(r["input_ids"]))
    rows = rows[:BATCH * n] if len(rows) >= BATCH * n else (rows * (BATCH * n // len(rows) + 1))[:BATCH * n]
    collator = Collator(AutoTokenizer.from_pretrained(loader.model_dir), masked_lm=loader.lm_kind == "masked")
    order = length_grouped_batches([len(r["input_ids"]) for r in rows], BATCH, np.random.default_rng(0))
    batches = [collator([rows[j] for j in idx], generator=torch.Generator().manual_seed(i))
               for i, idx in enumerate(order)]
    return batches, calibration_batches(calibration, collator)


def analytic_saved_flops_per_token(ffn, attn, seq: int) -> float:
    """Per token: 2 x (forward + input-gradient) multiply-adds of the skipped FFN channels and, with attention
    sparsity, of the skipped q/k/v output channels and o input columns, plus the attention's own matmuls on the
    skipped channels (QK^T and PV: forward 2, backward 4, over ``seq`` positions); minus the predictor's
    forward multiply-adds (it runs without gradients)."""
    fmap, saved = ffn.fmap, 0.0
    for i, block in enumerate(ffn.blocks):
        up = submodule(block, fmap.ups[0])
        hidden = getattr(up, "base_layer", up).weight.shape[1]
        s, inter = ffn.sparsities[i], ffn.widths[i]
        if s > 0:
            skipped = inter - round(inter * (1 - s))
            saved += 2 * 2 * (len(fmap.ups) + 1) * hidden * skipped
            rank = ffn.predictors[i][0][0].shape[1]
            saved -= 2 * len(fmap.ups) * rank * (hidden + inter)
        if attn is not None and attn.sparsities[i] > 0:
            n_q, n_kv, head_dim = attn.heads
            skipped = head_dim - attn.kept(i)
            saved += 2 * 2 * hidden * skipped * (2 * n_q + 2 * n_kv) + 2 * 6 * seq * skipped * n_q
            rank = attn.predictors[i][0][0].shape[1]
            saved -= 2 * rank * (3 * hidden + (n_q + 2 * n_kv) * head_dim)
    return saved


def measure(model_name: str, config: dict, sparse_params: dict, lora_params: dict, steps: int, precision) -> dict:
    dataset, tokens = CASES[model_name]
    ds = config["datasets"][dataset]
    model_dir, tok_dir = prepare(config, dataset, REPO / "resources" / "bench")
    loader = ModelLoader.for_dataset(model_dir, ds, config["models"][ds["model"]])
    batches, calibration = batches_of(tok_dir, loader, tokens, steps)
    settings = TrainingSettings.from_dict({**config["training"], "batch_size": BATCH, "warmup_ratio": 0.0})
    lora = Arm("lora", lora_params, loader, settings, steps, precision)
    sparse = Arm("sparselora", sparse_params, loader, settings, steps, precision)
    # Past the dense warm-up: every step is sparse.
    sparse.method.on_train_start(sparse.model, steps, steps, lambda: calibration)
    with sparse.method.computing("dense"):  # the FFN's true inputs come from a dense attention
        quality = sparse.method.ffn_sparsity.predictor_quality(
            sparse.model, {k: v for k, v in batches[0].items() if k != "labels"})
    counted = {"lora": step_flops_per_token(lora.model, lora.method, batches[0], precision)["dense"],
               "sparselora": step_flops_per_token(sparse.model, sparse.method, batches[0], precision)["sparse"]}
    analytic = analytic_saved_flops_per_token(sparse.method.ffn_sparsity, sparse.method.attn_sparsity,
                                              batches[0]["input_ids"].shape[1])
    times = interleaved_bare_steps({"lora": lora, "sparselora": sparse}, batches)
    per_layer = sparse.method.ffn_sparsity.sparsities
    row = {"model": model_name, "batch": f"{BATCH} x {batches[0]['input_ids'].shape[1]}",
           "ffn_sparsity": sparse_params.get("ffn_sparsity"),
           "attn_sparsity": sparse_params.get("attn_sparsity", 0.0),
           "sparse_layers": f"{sum(x > 0 for x in per_layer)}/{len(per_layer)}",
           "steps_timed": len(times["lora"]),
           **step_summary(times)}
    row["speedup"] = row["lora_step_ms_median"] / row["sparselora_step_ms_median"]
    ratios = np.asarray(times["lora"]) / np.asarray(times["sparselora"])
    row["speedup_iqr"] = float(np.subtract(*np.percentile(ratios, [75, 25])))
    row["flops_saved_counted"] = 1 - counted["sparselora"] / counted["lora"]
    row["flops_saved_analytic"] = analytic / counted["lora"]
    row["overlap_mean"] = float(np.mean([q["overlap"] for q in quality.values()]))
    row["overlap_min"] = float(np.min([q["overlap"] for q in quality.values()]))
    row["random_overlap"] = 1 - max(sparse.method.ffn_sparsity.sparsities)
    row["mass_mean"] = float(np.mean([q["mass"] for q in quality.values()]))
    row["overlap_by_layer"] = {i: round(q["overlap"], 2) for i, q in sorted(quality.items())}
    sparse.method.finalize(sparse.model)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 timed steps per arm instead of 40")
    parser.add_argument("--sparsity", type=float, default=None, help="override sparselora.ffn_sparsity")
    parser.add_argument("--params", type=json.loads, default={},
                        help="JSON object of sparselora settings over config.yaml's, e.g. "
                             "'{\"ffn_sparsity\": 0.9, \"dense_layers\": [0, 1, 2, -1]}'")
    parser.add_argument("--precision", default=None, help="override config.yaml's precision (auto, fp32, bf16)")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    set_threads(2)
    config = load_config(REPO / "config.yaml")
    precision = resolve_precision(args.precision or config["precision"], CPU)
    overrides = {**args.params, **({"ffn_sparsity": args.sparsity} if args.sparsity is not None else {})}
    steps = 14 if args.quick else 42
    rows = [measure(m, config, {**method_params_on(config, "sparselora", m), **overrides},
                    method_params_on(config, "lora", m), steps, precision) for m in args.models]
    print(f"# SparseLoRA against LoRA, {date.today()}, {device_name(CPU)} ({platform.machine()}), "
          f"precision {precision.name}, torch {torch.__version__}")
    cols = ["model", "batch", "ffn_sparsity", "attn_sparsity", "sparse_layers", "steps_timed",
            "lora_step_ms_median", "lora_step_ms_iqr", "sparselora_step_ms_median", "sparselora_step_ms_iqr",
            "speedup", "speedup_iqr", "flops_saved_counted", "flops_saved_analytic", "overlap_mean", "overlap_min",
            "random_overlap", "mass_mean"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print()
    for r in rows:
        print(f"{r['model']}: predictor overlap with the oracle top-k, by layer: {r['overlap_by_layer']}")
    by = {r["model"]: r for r in rows}
    fmt = lambda m, k: f"{by[m][k]:.3f}" if m in by else "nan"  # noqa: E731
    print(f"speedup_smollm2={fmt('smollm2', 'speedup')} speedup_minilm={fmt('minilm', 'speedup')} "
          f"flops_saved={fmt('smollm2', 'flops_saved_counted')}")


if __name__ == "__main__":
    main()
