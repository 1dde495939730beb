"""Every CUDA path of lorabench, checked in one go on random-initialized tiny models: needs no weights, no data.

    .venv/bin/python benchmarks/gpu_check.py                 # on a GPU node: device cuda (make gpu-check)
    .venv/bin/python benchmarks/gpu_check.py --device cpu    # the same checks on the CPU; CUDA-only ones skipped

It writes a snapshot folder laid out like ../shared/hf with three tiny models (DistilBERT, BERT, Llama: random
weights, a 600-word tokenizer) and two synthetic datasets (a learnable sentence classification, a language
modelling text), then runs what the pipeline runs on them, in-process:

- precision: what ``auto`` resolves to on this device, and why;
- every method of configs/smoke.yaml (LoRA and its pruned variants, QLoRA, SparseLoRA, HiRA, QHiRA, AdaLoRA,
  DoRA, a PEFT method from config, full fine-tuning) trained, evaluated and timed in the resolved precision,
  LoRA and full fine-tuning also in bf16 and fp16 (fp16 with loss scaling);
- memory by phase: every peak measured and of the device's kind, the load phase on the device, paged optimizer
  state counted and paged again after a resume;
- QLoRA's training FLOPs per token equal LoRA's (same matmuls, the 4-bit ones dequantized);
- SparseLoRA's narrowed FFN equals the dense one with the other channels zeroed, outputs and gradients;
- a run killed by SIGKILL and resumed in deterministic mode equals an uninterrupted one;
- a smoke pipeline run through Snakemake on the device (CUDA only: the test suite runs the CPU one).

Prints a table (check, result, detail); the last line is ``gpu_check=pass checks=N failed=0`` (or
``gpu_check=fail``); the exit status is 1 if any check failed. ``--keep DIR`` keeps the folder. About a minute
on a CPU. Beyond the project (pip install -e .) it needs torch, transformers, peft and bitsandbytes built for the
node's CUDA: README, "Running on a GPU cluster"."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lorabench.config.views import dataset_entry, dataset_training, method_params_on  # noqa: E402
from lorabench.execution.jobs import efficiency_run, train_run  # noqa: E402
from lorabench.loading.data import fetch_dataset, tokenize_dataset  # noqa: E402
from lorabench.loading.models import fetch_model  # noqa: E402
from lorabench.methods.checks import check_config  # noqa: E402
from lorabench.runtime.precision import cuda_capability, resolve_precision  # noqa: E402

WORDS = [f"w{i}" for i in range(600)]
POSITIVE, NEGATIVE = WORDS[:20], WORDS[20:40]  # a sentence's label is which of the two groups it draws from
# Each method of configs/smoke.yaml runs on these datasets; SparseLoRA's attention map has no DistilBERT.
DATASETS_OF = {"sparselora": ["imdb", "wikitext2"], "qhira": ["wikitext2"], "base": ["wikitext2"]}
TIMING = {"latency_examples": 2, "timing_repeats": 2, "throughput_batch_size": 8, "throughput_min_time_s": 0.05}


class Checks:
    """The table: one row per check, run in order; a check that raises fails with the exception's last line."""

    def __init__(self, cuda: bool):
        self.cuda, self.rows = cuda, []

    def run(self, name: str, fn, *args, cuda_only: bool = False, why_skipped: str = "CUDA only") -> None:
        if cuda_only and not self.cuda:
            self.rows.append((name, "skip", why_skipped))
            return
        start = time.perf_counter()
        try:
            detail = fn(*args) or ""
            status = "pass"
        except Exception as err:  # noqa: BLE001  (every failure is a row of the table, not the end of the run)
            detail = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
            status = "FAIL"
            traceback.print_exc(file=sys.stderr)
        self.rows.append((name, status, f"{detail} ({time.perf_counter() - start:.1f} s)"))
        print(f"{status:4}  {name}: {detail}", file=sys.stderr, flush=True)

    def report(self) -> bool:
        width = max(len(n) for n, _, _ in self.rows)
        print(f"{'check':{width}}  result  detail")
        for name, status, detail in self.rows:
            print(f"{name:{width}}  {status:6}  {detail}")
        ran = [r for r in self.rows if r[1] != "skip"]
        failed = [r for r in ran if r[1] == "FAIL"]
        skipped = [r[0] for r in self.rows if r[1] == "skip"]
        if skipped:
            print(f"skipped ({len(skipped)}): {', '.join(skipped)}")
        print(f"gpu_check={'fail' if failed else 'pass'} checks={len(ran)} failed={len(failed)}")
        return not failed


# --- the synthetic hub snapshot -------------------------------------------------------------------------------
def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind != "llama" else ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                       eos_token="</s>", model_max_length=512)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def _write_models(root: Path) -> None:
    from transformers import (BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM, LlamaConfig,
                              LlamaForCausalLM)

    vocab = 5 + len(WORDS)
    torch.manual_seed(0)
    built = {
        "distilbert": DistilBertForMaskedLM(DistilBertConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=2,
                                                             hidden_dim=128, pad_token_id=0,
                                                             architectures=["DistilBertForMaskedLM"])),
        "bert": BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=128, pad_token_id=0,
                                           architectures=["BertForMaskedLM"])),
        "llama": LlamaForCausalLM(LlamaConfig(vocab_size=4 + len(WORDS), hidden_size=64, intermediate_size=160,
                                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                              pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                              architectures=["LlamaForCausalLM"])),
    }
    for kind, model in built.items():
        folder = root / "models" / "lorabench-check" / f"tiny-{kind}"
        model.save_pretrained(folder, safe_serialization=True)
        _tokenizer(kind).save_pretrained(folder)


def _write_datasets(root: Path) -> None:
    rng = random.Random(0)

    def sentence(label: int) -> str:
        group = POSITIVE if label else NEGATIVE
        return " ".join(rng.choice(group) if rng.random() < 0.3 else rng.choice(WORDS[40:])
                        for _ in range(rng.randint(6, 24)))

    for split, n in (("train", 160), ("validation", 48)):
        labels = [i % 2 for i in range(n)]
        folder = root / "datasets" / "lorabench-check" / "sentences" / "data"
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sentence": [sentence(y) for y in labels], "label": labels}).to_parquet(
            folder / f"{split}-00000-of-00001.parquet")
    for split, n in (("train", 400), ("test", 120)):
        folder = root / "datasets" / "lorabench-check" / "text" / "data"
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text": [" ".join(rng.choice(WORDS[:100]) for _ in range(12)) for _ in range(n)]}).to_parquet(
            folder / f"{split}-00000-of-00001.parquet")


def check_config_for(snapshots: Path, device: str) -> dict:
    """configs/smoke.yaml's methods on the three tiny models and the synthetic data, validated as the workflow does."""
    config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    config.update(snapshots=str(snapshots), device=device, precision="auto", tracking=[])
    config["models"] = {kind: {"repo": f"lorabench-check/tiny-{kind}"} for kind in ("distilbert", "bert", "llama")}
    cls = {"repo": "lorabench-check/sentences", "task": "classification", "text_field": "sentence",
           "label_field": "label", "train_split": "train", "eval_split": "validation", "train_size": 64,
           "eval_size": 32, "max_length": 32, "holdout_size": 16}
    # The schema knows the three datasets by name: here they are the synthetic ones, one per architecture.
    config["datasets"] = {
        "sst2": {**cls, "model": "distilbert"},
        "imdb": {**cls, "model": "bert"},
        "wikitext2": {"repo": "lorabench-check/text", "task": "language_modeling", "model": "llama",
                      "text_field": "text", "train_split": "train", "eval_split": "test", "train_size": 16,
                      "eval_size": 8, "max_length": 32, "stride": 32, "holdout_size": 4, "curve_points": 2},
    }
    for name, params in config["methods"].items():
        params["datasets"] = DATASETS_OF.get(name, ["sst2", "wikitext2"])
    config["methods"]["dora"] = {"type": "lora", "lr": 1.0e-3, "r": 4, "alpha": 8, "dropout": 0.0, "use_dora": True,
                                 "datasets": ["imdb"]}
    config["methods"]["vera"]["datasets"] = ["imdb"]
    config["training"].update(max_steps=4, checkpoint_every=0)
    config["evaluation"].update(TIMING, curve_points=2)
    return check_config(config)


def prepare(config: dict, work: Path) -> dict[str, tuple[Path, Path]]:
    """dataset -> (model folder, tokenized folder), as the fetch and tokenize rules write them."""
    out = {}
    for name in config["datasets"]:
        ds = dataset_entry(config, name)
        model_dir, raw, tok = work / "models" / ds["model"], work / "raw" / name, work / "tokenized" / name
        if not model_dir.exists():
            fetch_model(config["models"][ds["model"]]["repo"], config["snapshots"], model_dir)
        fetch_dataset(ds["repo"], None, [ds["train_split"], ds["eval_split"]], config["snapshots"], raw)
        tokenize_dataset(ds, model_dir, raw, config["training"]["subset_seed"], tok, name)
        out[name] = (model_dir, tok)
    return out


# --- the checks ------------------------------------------------------------------------------------------------
class Runner:
    """Runs the pipeline's two torch jobs on the check's config, in-process; keeps every run's metrics."""

    def __init__(self, config: dict, paths: dict, work: Path, device: str):
        self.config, self.paths, self.work, self.device = config, paths, work, device
        self.metrics: dict[tuple, dict] = {}

    def kwargs(self, dataset: str, method: str, out: Path, **overrides) -> dict:
        ds = dataset_entry(self.config, dataset)
        model_dir, tok = self.paths[dataset]
        params = method_params_on(self.config, method, ds["model"])
        evaluation = {"batch_size": 16, "mask_seed": 0, "curve_points": ds.get("curve_points") or 2}
        kw = dict(model_dir=str(model_dir), tokenized_dir=str(tok), out_model_dir=str(out / "model"),
                  out_metrics=str(out / "train_metrics.json"), out_eval_metrics=str(out / "eval_metrics.json"),
                  out_predictions=str(out / "predictions.csv"), dataset_name=dataset, dataset=ds,
                  model_cfg=self.config["models"][ds["model"]], method_name=method, method_params=params,
                  training=dataset_training(self.config, dataset), evaluation=evaluation, seed=0, threads=2,
                  device=self.device, precision="auto", cost_per_device_hour={"cpu": 0.05, "cuda": 3.5},
                  checkpoint_dir=str(out / "checkpoint"), tracking=[], results_dir=str(self.work / "results"))
        kw.update(overrides)
        return kw

    def train(self, dataset: str, method: str, precision: str = "auto") -> str:
        out = self.work / "runs" / dataset / f"{method}_{precision}"
        m = train_run(**self.kwargs(dataset, method, out, precision=precision))
        ev = json.loads((out / "eval_metrics.json").read_text())
        self.metrics[(dataset, method, precision)] = m
        expect_kind = "cuda_allocated" if self.device == "cuda" else "rss"
        trains = m["train_steps"] > 0
        assert m["memory_kind_train"] == expect_kind, m["memory_kind_train"]
        assert m["device_type"] == self.device and m["device"], m["device"]
        if trains:
            assert all(math.isfinite(p["loss"]) for p in m["loss_curve"]), "a non-finite loss"
            assert m["peak_train_mem_mb"] > 0 and m["train_flops"] > 0, (m["peak_train_mem_mb"], m["train_flops"])
            assert m["heldout_curve"], "no held-out curve"
        if self.device == "cuda":  # the load phase includes the weights' arrival on the GPU, for every method
            assert m["load_peak_mem_mb"] > 0, f"load_peak_mem_mb {m['load_peak_mem_mb']}"
        metric = "accuracy" if "accuracy" in ev else "perplexity"
        assert math.isfinite(ev[metric]), ev
        return (f"{m['precision']}, {m['train_steps']} steps, loss {m.get('final_train_loss', float('nan')):.3f}, "
                f"{metric} {ev[metric]:.3g}, peak {m['peak_train_mem_mb']:.0f} MB ({m['memory_kind_train']}), "
                f"optimizer {m.get('optimizer') or '-'}")

    def efficiency(self, dataset: str, method: str) -> str:
        ds = dataset_entry(self.config, dataset)
        model_dir, tok = self.paths[dataset]
        out = self.work / "efficiency" / dataset / f"{method}.json"
        r = efficiency_run(model_dir=str(model_dir), tokenized_dir=str(tok), out_json=str(out), dataset=ds,
                           model_cfg=self.config["models"][ds["model"]], method_name=method,
                           method_params=method_params_on(self.config, method, ds["model"]),
                           evaluation=TIMING, threads=2, device=self.device, precision="auto")
        assert r["efficiency_device_type"] == self.device and r["efficiency_device"]
        assert r["memory_kind_efficiency"] == ("cuda_allocated" if self.device == "cuda" else "rss")
        assert r["peak_infer_mem_mb"] > 0 and r["throughput_per_s"] > 0 and r["latency_ms"] > 0, r
        assert r["flops_per_example"] > 0
        return (f"latency {r['latency_ms']:.2f} ms, {r['throughput_per_s']:.0f}/s, inference peak "
                f"{r['peak_infer_mem_mb']:.1f} MB, {r['flops_per_example']:.3g} FLOPs/example")


def check_precision(device: torch.device) -> str:
    p = resolve_precision("auto", device)
    if device.type == "cuda":
        wanted = "bf16" if cuda_capability(device) >= (8, 0) else "fp16"
        assert p.name == wanted, (p.name, wanted)
        assert p.grad_scaler().is_enabled() == (p.name == "fp16")
    return f"auto -> {p.name}: {p.reason}"


def check_qlora_flops(runner: Runner, dataset: str) -> str:
    lora, qlora = runner.metrics[(dataset, "lora", "auto")], runner.metrics[(dataset, "qlora", "auto")]
    a, b = lora["train_flops_per_token"]["dense"], qlora["train_flops_per_token"]["dense"]
    assert abs(a - b) <= 1e-6 * a, f"LoRA {a:.6g} against QLoRA {b:.6g} FLOPs per token"
    return f"{a:.6g} FLOPs per token, both"


def check_paged_state(device: torch.device) -> str:
    """A paged AdamW's state is in managed memory, counted by managed_bytes, and paged again after a resume."""
    from lorabench.methods import build_method
    from lorabench.runtime.memory import managed_bytes

    method = build_method("lora", {"lr": 1e-3, "r": 4, "alpha": 8, "optimizer": "paged_adamw"}, ["q"])
    param = torch.nn.Parameter(torch.randn(512, 256, device=device))  # over bitsandbytes' 1e5-element threshold
    opt = method.make_optimizer([param], 1e-3, 0.0)
    param.grad = torch.randn_like(param)
    opt.step()
    fresh = managed_bytes(opt)
    assert fresh >= 2 * param.numel() * 4, f"{fresh} managed bytes after a step"
    state = opt.state_dict()
    resumed = method.make_optimizer([param], 1e-3, 0.0)
    method.load_optimizer_state(resumed, state)
    again = managed_bytes(resumed)
    assert again == fresh, f"{again} managed bytes after the resume, {fresh} before"
    resumed.step()
    return f"{fresh / 2**20:.2f} MB managed before and after a resume; {method.optimizer_ran()}"


def check_sparselora_exact(paths: dict, device: torch.device) -> str:
    """The narrowed FFN (gathered weights) against the dense FFN with the other channels zeroed, in fp32."""
    from lorabench.loading.models import ModelLoader
    from lorabench.methods import build_method
    from lorabench.methods.sparselora.channels import submodule
    from lorabench.methods.sparselora.ffn import FFN_MAPS, FFNSparsity, find_blocks
    from lorabench.methods.sparselora.predictors import compute_predictors

    loader = ModelLoader(paths["wikitext2"][0], "language_modeling")
    torch.manual_seed(0)
    model = build_method("lora", {"lr": 1e-3, "r": 4, "alpha": 8, "dropout": 0.0}, loader.target_modules).build(loader)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.to(device).train()
    base = model.get_base_model()
    n = len(find_blocks(base, FFN_MAPS["llama"]))
    sparsity = FFNSparsity(base, "llama", [0.5] * n, compute_predictors(base, "llama", 4))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 600, (4, 12), generator=gen).to(device)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    def step(sparse: bool):
        sparsity.sparse = sparse
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        return out.logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    kept = {i: torch.randperm(w, generator=gen)[: w // 3].sort().values.to(device)
            for i, w in enumerate(sparsity.widths)}
    sparsity.force_channels = kept
    logits, grads = step(True)
    hooks = []
    for i, block in enumerate(sparsity.blocks):
        keep = torch.zeros(sparsity.widths[i], device=device)
        keep[kept[i]] = 1.0
        hooks.append(submodule(block, sparsity.fmap.down).register_forward_pre_hook(
            lambda module, args, keep=keep: (args[0] * keep,)))
    ref_logits, ref_grads = step(False)
    for h in hooks:
        h.remove()
    dense_logits, _ = step(False)
    sparsity.remove()
    assert not torch.allclose(dense_logits, ref_logits, atol=1e-4), "zeroing the channels changed nothing"
    err = (logits - ref_logits).abs().max().item()
    assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4), f"logits differ by {err:.2e}"
    worst = max((grads[k] - ref_grads[k]).abs().max().item() for k in grads)
    assert all(torch.allclose(grads[k], ref_grads[k], atol=1e-4, rtol=1e-3) for k in grads), f"grads {worst:.2e}"
    return f"logits within {err:.1e}, {len(grads)} gradients within {worst:.1e}"


def check_resume(runner: Runner) -> str:
    """SIGKILL a deterministic run after its second checkpoint, resume it, compare with an uninterrupted one."""
    # 5 epochs of 8 steps: long enough that the kill lands mid-run, not after the last checkpoint
    training = {**dataset_training(runner.config, "sst2"), "checkpoint_every": 1, "max_steps": None, "epochs": 5}
    ref_out, out = runner.work / "resume" / "reference", runner.work / "resume" / "killed"
    common = dict(training=training, deterministic=True)
    reference = train_run(**runner.kwargs("sst2", "lora", ref_out, **common))
    kwargs = runner.kwargs("sst2", "lora", out, **common)
    code = "import json, sys; from lorabench.execution.jobs import train_run; train_run(**json.loads(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    ckpt, deadline = out / "checkpoint" / "checkpoint.pt", time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:  # killed at its first checkpoint
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train_metrics.json").exists(), "the killed run finished before the kill"
    resumed = train_run(**kwargs)
    assert 1 <= resumed["resumed_from_step"] < resumed["train_steps"], resumed["resumed_from_step"]
    assert resumed["loss_curve"] == reference["loss_curve"], "the loss curves differ"
    assert [p[k] for p in resumed["heldout_curve"] for k in ("step", "accuracy")] == \
        [p[k] for p in reference["heldout_curve"] for k in ("step", "accuracy")], "the held-out curves differ"
    assert resumed["attempts"] == 2 and resumed["device_hours"] > 0
    return (f"resumed at step {resumed['resumed_from_step']} of {resumed['train_steps']}; losses and held-out curve "
            f"equal; {resumed['attempts']} attempts billed {resumed['device_hours'] * 3600:.1f} s")


def check_pipeline(config: dict, work: Path) -> str:
    """The Snakefile end to end on the device, LoRA, QLoRA and full fine-tuning on two datasets."""
    import importlib.util

    if importlib.util.find_spec("snakemake") is None:
        raise RuntimeError("snakemake is not installed: pip install -e . installs the pipeline")
    small = {**config, "methods": {m: {**config["methods"][m], "datasets": ["sst2", "wikitext2"]}
                                   for m in ("lora", "qlora", "full_ft")}}
    small["datasets"] = {k: v for k, v in config["datasets"].items() if k != "imdb"}
    small.pop("lr_grid", None)
    cfg = work / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump(small))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "-s", str(REPO / "Snakefile"), "-d",
                           str(work / "pipeline"), "--configfile", str(cfg)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = pd.read_csv(work / "pipeline" / "results" / "summary.csv")
    assert len(summary) == 6 and set(summary["device_type"]) == {config["device"]}, summary[["method", "device"]]
    return f"{len(summary)} runs on {summary['device'].iloc[0]}, precision {', '.join(set(summary['precision']))}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--keep", help="keep the check's folder here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run with --device cpu, or on a GPU node", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="lorabench-gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    checks = Checks(cuda=args.device == "cuda")
    try:
        _write_models(work / "snapshots")
        _write_datasets(work / "snapshots")
        config = check_config_for(work / "snapshots", args.device)
        paths = prepare(config, work)
        runner = Runner(config, paths, work, args.device)
        checks.run("precision auto resolves by device capability", check_precision, device)
        for method, params in config["methods"].items():
            for dataset in params["datasets"]:
                checks.run(f"train {method} on {dataset}", runner.train, dataset, method)
        for precision in ("bf16", "fp16"):
            if args.device == "cuda" and precision == "bf16" and cuda_capability(device) < (8, 0):
                checks.rows.append((f"train lora in {precision}", "skip", "no native bf16 on this GPU"))
                continue
            for method in ("lora", "full_ft"):
                checks.run(f"train {method} in {precision}", runner.train, "sst2", method, precision)
        for method in ("lora", "qlora", "sparselora", "full_ft"):
            dataset = "wikitext2"
            checks.run(f"efficiency {method} on {dataset}", runner.efficiency, dataset, method)
        checks.run("QLoRA FLOPs per token equal LoRA's", check_qlora_flops, runner, "wikitext2")
        checks.run("paged optimizer state managed, paged again after resume", check_paged_state, device,
                   cuda_only=True, why_skipped="CUDA only: bitsandbytes pages on a GPU alone")
        checks.run("SparseLoRA narrowed FFN equals masked dense", check_sparselora_exact, paths, device)
        checks.run("SIGKILL and resume equals uninterrupted (deterministic)", check_resume, runner)
        checks.run("smoke pipeline through Snakemake on the device", check_pipeline, config, work, cuda_only=True,
                   why_skipped="CUDA only: the test suite runs the CPU pipeline")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if checks.report() else 1


if __name__ == "__main__":
    sys.exit(main())
