"""QLoRA's memory against LoRA's on SmolLM2, by phase, with and without gradient checkpointing.

    .venv/bin/python benchmarks/memory_phases.py [--quick] [--config config.yaml] [--out docs/measurements/qlora-memory.md]

Each arm runs in a fresh process (a heap shaped by an earlier arm would serve the next one's blocks): the
model is built as config.yaml's WikiText-2 run builds it, trained for a few steps of the run's batch shape
with lorabench's own loop, whose training peak comes from probe steps measured exact (lorabench/memory.py),
then the inference peaks are taken as the efficiency job takes them (one forward at
``evaluation.throughput_batch_size``, one at batch 1). Arms: LoRA and QLoRA, each with
``training.gradient_checkpointing`` off (the default config) and on. Exact byte counts of the stored
weights come with them.
The last line is  train_ratio=X infer_ratio=Y infer_batch1_ratio=Z param_bytes_ratio=W train_ratio_ckpt=V
(QLoRA / LoRA; the ratios without checkpointing are the default config's).
Data and models are prepared under resources/bench/ from the snapshots (LORABENCH_SNAPSHOTS, default ../shared/hf).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import date

import pandas as pd

from common import REPO

DATASET = "wikitext2"
ARMS = [(m, ckpt) for ckpt in (False, True) for m in ("lora", "qlora")]


def worker(config_path: str, method_name: str, ckpt: bool, steps: int) -> dict:
    """One arm, in this process: build, train ``steps`` optimizer steps, measure inference."""
    import torch

    from lorabench.config.views import method_params_on
    from lorabench.execution.inference import inference_memory
    from lorabench.execution.jobs import _collator, _setup
    from lorabench.execution.settings import TrainingSettings
    from lorabench.execution.trainer import RunId, train
    from lorabench.loading.data import EVAL, TRAIN, load_tokenized
    from lorabench.methods.checks import load_config
    from lorabench.runtime.device import seed_everything
    from lorabench.runtime.memory import PhaseMemory

    from common import prepare

    config = load_config(config_path)
    ds = config["datasets"][DATASET]
    model_dir, tok_dir = prepare(config, DATASET, REPO / "resources" / "bench")
    params = method_params_on(config, method_name, ds["model"])
    loader, method, dev, prec = _setup(model_dir, ds, config["models"][ds["model"]], method_name, params,
                                       config["threads"], "cpu", config["precision"])
    memory = PhaseMemory(dev)
    seed_everything(0)
    model = method.build(loader)
    load_peak = memory.peak_mb()
    settings = TrainingSettings.from_dict({**config["training"], "gradient_checkpointing": ckpt, "epochs": 1})
    rows = load_tokenized(tok_dir, TRAIN).to_list()[: steps * settings.batch_size * settings.grad_accum_steps]
    collator = _collator(loader, settings.mlm_probability)
    # Inference first, on the freshly built model, as the efficiency job measures it in a process of its own:
    # after training, blocks the training steps freed into the heap would be reused and stay resident.
    peaks = inference_memory(model, load_tokenized(tok_dir, EVAL).to_list(), collator, dev,
                             config["evaluation"]["throughput_batch_size"], memory, prec)
    result = train(model, method, rows, collator, settings, params["lr"], 0, dev, RunId(method_name, DATASET, 0),
                   memory, None, prec)
    return {"method": method_name, "gradient_checkpointing": ckpt, "load_peak_mem_mb": load_peak,
            "peak_train_mem_mb": result["peak_train_mem_mb"], **peaks, "param_bytes": result["param_bytes"],
            "step_s": result["train_time_s"] / result["train_steps"], "precision": prec.name,
            "batch": f"{settings.batch_size} x {ds['max_length']}", "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--quick", action="store_true", help="3 training steps per arm instead of 6")
    ap.add_argument("--out", help="append the table to this markdown file")
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "CKPT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    steps = 3 if args.quick else 6
    if args.worker:
        print(json.dumps(worker(args.config, args.worker[0], args.worker[1] == "1", steps)))
        return
    rows = []
    for method, ckpt in ARMS:
        cmd = [sys.executable, __file__, "--config", args.config, "--worker", method, str(int(ckpt))]
        cmd += ["--quick"] if args.quick else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"arm {method} (gradient_checkpointing={ckpt}) failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    df = pd.DataFrame(rows)
    cols = ["load_peak_mem_mb", "peak_train_mem_mb", "peak_infer_mem_mb", "peak_infer_batch1_mem_mb", "param_bytes"]
    ratio = {}
    for ckpt, g in df.groupby("gradient_checkpointing"):
        lora, qlora = (g[g["method"] == m].iloc[0] for m in ("lora", "qlora"))
        ratio[ckpt] = {c: qlora[c] / lora[c] for c in cols + ["step_s"]}
    table = df.round({c: 0 for c in cols} | {"step_s": 2}).to_markdown(index=False)
    ratios = pd.DataFrame(ratio).T.round(2).rename_axis("gradient_checkpointing").to_markdown()
    header = (f"SmolLM2 on WikiText-2 as config.yaml builds it ({df['batch'].iloc[0]} tokens, {df['precision'].iloc[0]}), "
              f"{steps} training steps per arm, {platform.processor() or platform.machine()}, {date.today()}")
    text = f"{header}\n\n{table}\n\nQLoRA / LoRA:\n\n{ratios}\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    off, on = ratio[False], ratio[True]
    print(f"train_ratio={off['peak_train_mem_mb']:.2f} infer_ratio={off['peak_infer_mem_mb']:.2f} "
          f"infer_batch1_ratio={off['peak_infer_batch1_mem_mb']:.2f} param_bytes_ratio={off['param_bytes']:.2f} "
          f"train_ratio_ckpt={on['peak_train_mem_mb']:.2f}")


if __name__ == "__main__":
    main()
