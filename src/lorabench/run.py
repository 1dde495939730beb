"""One benchmark run end to end: what the train and evaluate jobs call with their slice of the config."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from lorabench.config import TrainingSettings
from lorabench.data import EVAL, TRAIN, Collator, load_tokenized
from lorabench.evaluate import evaluate
from lorabench.inference import measure as measure_inference
from lorabench.methods import build_method, count_parameters
from lorabench.models import ModelLoader
from lorabench.trainer import RunId, train
from lorabench.utils import (atomic_dir, device_name, dir_size_mb, package_versions, peak_memory_mb, peak_rss_mb,
                             read_json, resolve_device, seed_everything, set_threads, write_json)


def _setup(model_dir, dataset: dict, model_cfg: dict, method_name: str, method_params: dict, threads: int):
    set_threads(threads)
    loader = ModelLoader(model_dir, dataset["task"], dataset.get("num_labels", 2), model_cfg.get("target_modules"))
    method = build_method(method_name, method_params, loader.target_modules)
    return loader, method


def _collator(loader: ModelLoader, mlm_probability: float) -> Collator:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(loader.model_dir)
    return Collator(tok, masked_lm=loader.lm_kind == "masked", mlm_probability=mlm_probability)


def train_run(*, model_dir, tokenized_dir, out_model_dir, out_metrics, dataset_name: str, dataset: dict,
              model_cfg: dict, method_name: str, method_params: dict, training: dict, seed: int,
              threads: int, device: str, cost_per_device_hour: dict, checkpoint_dir=None) -> dict:
    baseline = peak_rss_mb()  # after imports: the memory column measures the run, not the libraries
    loader, method = _setup(model_dir, dataset, model_cfg, method_name, method_params, threads)
    settings = TrainingSettings.from_dict(training)
    dev = resolve_device(device)
    seed_everything(seed)
    model = method.build(loader)
    counts = count_parameters(model, loader.head_modules)
    rows = load_tokenized(tokenized_dir, TRAIN).to_list()
    run = RunId(method_name, dataset_name, seed)
    wall = time.perf_counter()
    result = train(model, method, rows, _collator(loader, settings.mlm_probability), settings,
                   method_params["lr"], seed, dev, run, baseline, checkpoint_dir)
    with atomic_dir(out_model_dir) as tmp:
        method.save(model, tmp)
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the run is complete; nothing left to resume
    hours = (time.perf_counter() - wall) / 3600
    metrics = {
        **result, **counts, **method.report(model),
        "method": method_name, "dataset": dataset_name, "seed": seed, "model_repo": model_cfg["repo"],
        "task": dataset["task"], "train_split": dataset["train_split"], "eval_split": dataset["eval_split"],
        "device": device_name(dev), "device_type": dev.type, "torch_threads": torch.get_num_threads(),
        "device_hours": hours, "cost_usd": hours * cost_per_device_hour.get(dev.type, 0.0),
        "lr_reason": method_params.get("lr_reason", ""), "versions": package_versions(),
    }
    write_json(out_metrics, metrics)
    return metrics


def evaluate_run(*, model_dir, tokenized_dir, trained_dir, out_metrics, out_predictions, dataset: dict,
                 model_cfg: dict, method_name: str, method_params: dict, training: dict, evaluation: dict,
                 threads: int, device: str) -> dict:
    baseline = peak_rss_mb()
    loader, method = _setup(model_dir, dataset, model_cfg, method_name, method_params, threads)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model = method.load_trained(loader, trained_dir)
    rows = load_tokenized(tokenized_dir, EVAL).to_list()
    collator = _collator(loader, training["mlm_probability"])
    start = time.perf_counter()
    result, per_example = evaluate(model, rows, collator, dataset["task"], loader.lm_kind,
                                   evaluation["batch_size"], evaluation["mask_seed"], dev)
    result["eval_time_s"] = time.perf_counter() - start
    result["adapter_size_mb"] = dir_size_mb(trained_dir)
    result.update(measure_inference(model, method, rows, collator, dev, evaluation["throughput_batch_size"],
                                    evaluation["latency_examples"], result["adapter_size_mb"]))
    result["peak_infer_mem_mb"] = peak_memory_mb(dev, baseline)
    Path(out_predictions).parent.mkdir(parents=True, exist_ok=True)
    per_example.to_csv(out_predictions, index=False)
    write_json(out_metrics, result)
    return result


def flops_run(*, model_dir, tokenized_dir, out_json, dataset: dict, model_cfg: dict, method_name: str,
              method_params: dict, threads: int) -> dict:
    """fvcore FLOPs of the method's model at the task's mean sequence lengths, checked against torch's counter."""
    from transformers import AutoTokenizer

    from lorabench import flops

    loader, method = _setup(model_dir, dataset, model_cfg, method_name, method_params, threads)
    counted_as = method.flops_proxy or method_name
    if method.flops_proxy:
        method = build_method(method.flops_proxy, method_params, loader.target_modules)
    seed_everything(0)
    model = method.build(loader)
    meta = read_json(Path(tokenized_dir) / "meta.json")
    vocab = len(AutoTokenizer.from_pretrained(loader.model_dir))
    result = flops.count(model, meta["eval"]["mean_length"], meta["train"]["mean_length"], vocab)
    result["flops_counted_as"] = counted_as
    result["flops_note"] = ("fvcore MACs x 2; scaled_dot_product_attention counted by a handle"
                            + ("; 4-bit base counted as the same architecture in full precision"
                               if counted_as != method_name else ""))
    write_json(out_json, result)
    return result
