"""What the two torch jobs call with their slice of the config.

- ``train_run``, one per (method, dataset, seed): train, save, then evaluate the model while it is still in
  memory (metrics and per-example predictions).
- ``efficiency_run``, one per (method, dataset): what does not depend on the seed or the learning rate,
  measured once with repeated rounds: latency, throughput, deployed size, inference memory and FLOPs.

Both record where their time went (``job_phases_s``), which benchmarks/pipeline_efficiency.py reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lorabench.config.tracking import exported_trackers
from lorabench.execution.attempts import record_failure, refuse_known_failure
from lorabench.execution.curve import HeldoutCurve
from lorabench.execution.evaluate import evaluate
from lorabench.execution.settings import TrainingSettings
from lorabench.execution.tracking import Tracking
from lorabench.execution.trainer import RunId, train, untrained_metrics
from lorabench.io import atomic_dir, dir_size_mb, package_versions, read_json, write_json
from lorabench.loading.data import EVAL, HELDOUT, TRAIN, Collator, evaluated_split, load_tokenized
from lorabench.loading.models import ModelLoader
from lorabench.methods import build_method, count_parameters, method_type
from lorabench.runtime.clock import process_started_at
from lorabench.runtime.device import device_name, resolve_device, seed_everything, set_deterministic, set_threads
from lorabench.runtime.memory import PhaseMemory
from lorabench.runtime.precision import resolve_precision


class PhaseClock:
    """Seconds per phase of this job, from the process's start (interpreter and imports = 'startup').

    A job that trains several seeds (seeds_per_job: execution/seed_chunk.py) runs each in a child forked after
    the imports; it sets ``started_at`` (the first seed: the job's own start, so it carries the job's start-up;
    the later ones: their fork) and ``process`` (the job's pid and start time, which tells pipeline_efficiency
    the seeds shared one process). A job forked from the warm process (execution/warm.py) sets ``started_at`` to
    its Snakemake job process's start, and ``warm``."""

    started_at: float | None = None
    process: tuple[int, float] | None = None
    warm: bool = False

    def __init__(self):
        created = process_started_at()  # not psutil's create_time: runtime/clock.py
        self._begin = PhaseClock.started_at if PhaseClock.started_at is not None else created
        self._process = PhaseClock.process or (os.getpid(), created)
        self.phases = {"startup": time.time() - self._begin}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now
        return self.phases[phase]

    def move(self, seconds: float, source: str, target: str) -> None:
        """Count ``seconds`` of phase ``source`` as phase ``target`` (a part timed inside a phase)."""
        self.phases[source] -= seconds
        self.phases[target] = self.phases.get(target, 0.0) + seconds

    def done(self) -> dict:
        self.phases["total"] = time.time() - self._begin
        return {**self.phases, "process_id": self._process[0], "process_started_unix_s": self._process[1],
                "warm_process": PhaseClock.warm}


def _setup(model_dir, dataset: dict, model_cfg: dict, method_name: str, method_params: dict, threads: int,
           device: str, precision: str, method_inputs: dict | None = None, deterministic: bool = False):
    set_deterministic(deterministic)  # before anything touches cuBLAS
    set_threads(threads)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    loader = ModelLoader.for_dataset(model_dir, dataset, model_cfg)
    method = build_method(method_name, method_params, loader.target_modules, prec, method_inputs)
    return loader, method, dev, prec


def _collator(loader: ModelLoader, mlm_probability: float) -> Collator:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(loader.model_dir)
    return Collator(tok, masked_lm=loader.lm_kind == "masked", mlm_probability=mlm_probability)


def train_run(*, model_dir, tokenized_dir, out_model_dir, out_metrics, out_eval_metrics, out_predictions,
              dataset_name: str, dataset: dict, model_cfg: dict, method_name: str, method_params: dict,
              training: dict, evaluation: dict, seed: int, threads: int, device: str, precision: str = "fp32",
              cost_per_device_hour: dict, checkpoint_dir=None, method_inputs: dict | None = None,
              tracking=None, results_dir="results", deterministic: bool = False) -> dict:
    """Train one (method, dataset, seed), save it, and evaluate the trained model without reloading it.
    ``method_inputs`` are files the method reads by role (SparseLoRA: {"predictor": path}); ``tracking``
    names the trackers the run is logged to, under ``results_dir`` (execution/tracking.py); by default those
    the workflow exported from the config (config/tracking.py). With ``evaluation["curve_points"]`` > 0 and a
    held-out slice (``holdout_size``), the run records its held-out curve (execution/curve.py). ``deterministic``:
    deterministic kernels only (runtime/device.py)."""
    clock = PhaseClock()
    loader, method, dev, prec = _setup(model_dir, dataset, model_cfg, method_name, method_params, threads, device,
                                       precision, method_inputs, deterministic)
    memory = PhaseMemory(dev)  # imports every library first: no phase is charged for them
    clock.lap("load")  # the imports and the method's set-up, not the trackers' start below
    config_slice = {"dataset": dataset_name, "method": method_name, "seed": seed, "dataset_settings": dataset,
                    "model": model_cfg, "method_params": method_params, "training": training,
                    "evaluation": evaluation, "device": device, "precision": precision}
    tracking = exported_trackers() if tracking is None else tracking
    where = device_name(dev)
    tracker = Tracking(tracking, results_dir, f"{dataset_name}/{method_name}/seed{seed}", config_slice,
                       {"device": where, "device_type": dev.type, "precision": prec.name,
                        "version": package_versions()}, checkpoint_dir)
    clock.lap("tracking")
    with tracker:  # closes the tracked runs, marked failed if the job fails
        settings = TrainingSettings.from_dict(training)
        seed_everything(seed)
        # On the device before the load phase ends: on a GPU, loading is the weights' arrival there (a quantized
        # model is placed while it loads; the others would otherwise read a load peak of 0).
        model = method.build(loader).to(dev)
        load_peak = memory.stop()  # the load phase ends: relaxed until the first probe step (untrained: evaluation)
        counts = count_parameters(model, loader.head_modules)
        rows = load_tokenized(tokenized_dir, TRAIN).to_list()
        collator = _collator(loader, settings.mlm_probability)
        run = RunId(method_name, dataset_name, seed)
        curve = _heldout_curve(tokenized_dir, dataset_name, dataset, collator, loader, evaluation, prec)
        clock.lap("load")
        if method.trains:
            failure_key = {"device": where, "method_params": method_params, "training": training,
                           "precision": precision, "seed": seed}
            refuse_known_failure(checkpoint_dir, failure_key)
            try:
                result = train(model, method, rows, collator, settings, method_params["lr"], seed, dev, run, memory,
                               checkpoint_dir, prec, tracker, curve)
            except Exception as err:
                record_failure(checkpoint_dir, failure_key, err)
                raise
        else:
            tracker.begin(0)
            result = untrained_metrics(model.to(dev), prec)
        clock.lap("train_loop")
        clock.move(result["curve_eval_time_s"], "train_loop", "curve")
        with atomic_dir(out_model_dir) as tmp:
            method.save(model, tmp)
        clock.lap("save")
        # Device time of training over every attempt (execution/attempts.py); the held-out curve and the
        # evaluation below are measurement, not billed.
        hours = result.pop("device_s") / 3600

        eval_rows = load_tokenized(tokenized_dir, EVAL).to_list()
        start = time.perf_counter()
        scores, per_example = evaluate(model, eval_rows, collator, dataset["task"], loader.lm_kind,
                                       evaluation["batch_size"], evaluation["mask_seed"], dev, prec)
        scores["eval_time_s"] = time.perf_counter() - start
        scores["adapter_size_mb"] = dir_size_mb(out_model_dir)
        clock.lap("evaluation")
        Path(out_predictions).parent.mkdir(parents=True, exist_ok=True)
        per_example.to_csv(out_predictions, index=False)
        write_json(out_eval_metrics, scores)

        metrics = {
            **result, **counts, **method.report(model),
            "method": method_name, "method_type": method_type(method_name, method_params), "dataset": dataset_name,
            "seed": seed, "model_repo": model_cfg["repo"],
            "task": dataset["task"], "train_split": dataset["train_split"], "eval_split": evaluated_split(dataset),
            "device": where, "device_type": dev.type, "torch_threads": torch.get_num_threads(),
            "device_hours": hours, "cost_usd": hours * cost_per_device_hour.get(dev.type, 0.0),
            "lr_reason": method_params.get("lr_reason", ""), "versions": package_versions(),
            "load_peak_mem_mb": load_peak, "memory_note": memory.note, "memory_kind_train": memory.kind,
            "precision_reason": prec.reason, "deterministic": deterministic,
        }
        # What ran, over every attempt (a resume on another GPU type joins both, ' + '), over the configured.
        metrics.update({k: result[k] for k in ("device", "precision", "optimizer") if result.get(k)})
        clock.lap("save")  # the outputs and the metrics above (adapter statistics, versions), not tracking
        tracker.finish({**metrics, **scores})  # the summary row: training and evaluation
        clock.lap("tracking")
        metrics["job_phases_s"] = clock.done()
        write_json(out_metrics, metrics)  # its presence means the whole run completed
        if checkpoint_dir is not None:  # after, not before: a kill in between resumes from the last checkpoint
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return metrics


def _heldout_curve(tokenized_dir, dataset_name: str, dataset: dict, collator, loader: ModelLoader,
                   evaluation: dict, precision) -> HeldoutCurve | None:
    """The held-out curve of runs on this dataset, or None: no curve points, or no held-out slice."""
    points = evaluation.get("curve_points", 0)
    if not points or not dataset.get("holdout_size"):
        return None
    return HeldoutCurve(load_tokenized(tokenized_dir, HELDOUT).to_list(), collator, dataset["task"], loader.lm_kind,
                        evaluation["batch_size"], evaluation["mask_seed"], points,
                        f"evaluation.curve_points (or datasets.{dataset_name}.curve_points)", precision)


def efficiency_run(*, model_dir, tokenized_dir, out_json, dataset: dict, model_cfg: dict, method_name: str,
                   method_params: dict, evaluation: dict, threads: int, device: str, precision: str = "fp32",
                   deterministic: bool = False) -> dict:
    """Latency, throughput, deployed size and inference memory of the method's model as deployed, and its FLOPs.

    None of these depends on the trained values of the weights, only on the architecture, so they are
    measured once per (method, dataset) on the model as built for seed 0, saved and loaded back the way a
    trained run is deployed; a learning-rate change does not rerun this job."""
    from lorabench.execution import flops
    from lorabench.execution.inference import inference_memory, measure
    from lorabench.loading.quantization import full_precision

    clock = PhaseClock()
    loader, method, dev, prec = _setup(model_dir, dataset, model_cfg, method_name, method_params, threads, device,
                                       precision, deterministic=deterministic)
    memory = PhaseMemory(dev)
    seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        method.save(method.build(loader), tmp)
        adapter_mb = dir_size_mb(tmp)
        model = method.load_trained(loader, tmp).to(dev)
    rows = load_tokenized(tokenized_dir, EVAL).to_list()
    collator = _collator(loader, 0.15)
    clock.lap("load")
    memory_peaks = inference_memory(model, rows, collator, dev, evaluation["throughput_batch_size"], memory, prec)
    result = measure(model, method, rows, collator, dev, evaluation["throughput_batch_size"],
                     evaluation["latency_examples"], adapter_mb, evaluation["timing_repeats"], prec,
                     evaluation.get("throughput_min_time_s", 0.0))
    result.update(memory_peaks, memory_note=memory.note, memory_kind_efficiency=memory.kind)
    # Named apart from the training job's device: a summary row holds both, and on a mixed cluster they differ.
    result.update(efficiency_precision=prec.name, efficiency_device=device_name(dev), efficiency_device_type=dev.type)
    del model
    clock.lap("efficiency_timing")

    # fvcore cannot trace a quantized model: it is counted as the same adapter on a full-precision base, whose
    # matmuls are the ones a quantized layer computes after dequantizing.
    quantized = method.quantization.quantized
    if quantized:
        method = build_method(method_name, full_precision(method_params), loader.target_modules, prec)
    seed_everything(0)
    meta = read_json(Path(tokenized_dir) / "meta.json")
    result.update(flops.count(method.build(loader), meta["eval"]["mean_length"], meta["train"]["mean_length"],
                              collator.vocab))
    result["flops_counted_as"] = f"{method_name}, quantize: none" if quantized else method_name
    result["flops_note"] = ("fvcore MACs x 2; scaled_dot_product_attention counted by a handle"
                            + ("; the quantized base counted as the same architecture in full precision"
                               if quantized else ""))
    clock.lap("flops")
    result["job_phases_s"] = clock.done()
    write_json(out_json, result)
    return result
