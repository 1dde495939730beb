"""Precision as one axis of every run: bf16 and fp32 both train, the run records what ran, contradictions are
refused before any job."""

import copy

import pytest
import torch

from lorabench.config import ConfigError
from lorabench.execution.jobs import train_run
from lorabench.io import read_json
from lorabench.loading.models import ModelLoader
from lorabench.methods import build_method
from lorabench.methods.checks import check_config
from lorabench.runtime.precision import native_bf16, resolve_precision

from conftest import MINILM
from conftest import SST2_DATASET as DATASET
from conftest import smoke_config, snakemake, write_config

CPU = torch.device("cpu")
TRAINING = {"epochs": 3, "batch_size": 16, "grad_accum_steps": 1, "warmup_ratio": 0.0, "weight_decay": 0.0,
            "max_grad_norm": 1.0, "subset_seed": 0, "checkpoint_every": 0}


def test_auto_resolves_to_bf16_only_where_the_cpu_computes_it_natively():
    assert resolve_precision("auto", CPU).name == ("bf16" if native_bf16(CPU) else "fp32")
    assert resolve_precision("fp32", CPU).autocast_dtype is None
    assert resolve_precision("bf16", CPU).autocast_dtype == torch.bfloat16
    assert not resolve_precision("bf16", CPU).grad_scaler().is_enabled()
    assert resolve_precision("fp16", CPU).grad_scaler().is_enabled()  # fp16 needs loss scaling
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_lowers_the_loss_and_is_recorded(precision, tokenized, tmp_path):
    out = tmp_path / precision
    metrics = train_run(
        model_dir=str(MINILM), tokenized_dir=str(tokenized), out_model_dir=str(out / "model"),
        out_metrics=str(out / "train.json"), out_eval_metrics=str(out / "eval.json"),
        out_predictions=str(out / "pred.csv"), dataset_name="sst2", dataset=DATASET,
        model_cfg={"repo": "sentence-transformers/all-MiniLM-L6-v2"}, method_name="lora",
        method_params={"lr": 3e-3, "r": 8, "alpha": 16, "dropout": 0.0}, training=TRAINING,
        evaluation={"batch_size": 32, "mask_seed": 0}, seed=0, threads=2, device="cpu", precision=precision,
        cost_per_device_hour={})
    curve = [p["loss"] for p in metrics["loss_curve"]]
    assert len(curve) == 18
    assert sum(curve[-4:]) / 4 < sum(curve[:4]) / 4 - 0.05, curve
    assert metrics["precision"] == precision and read_json(out / "train.json")["precision"] == precision
    assert 0 <= read_json(out / "eval.json")["accuracy"] <= 1
    assert (metrics["fp16_skipped_steps"] >= 0) if precision == "fp16" else (metrics["fp16_skipped_steps"] == 0)
    # weights and optimizer state stay fp32 whatever the autocast dtype
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out / "model" / "adapter_model.safetensors").values()} == {torch.float32}


def test_gradient_checkpointing_trains_the_same_run_and_is_part_of_the_params(tokenized, tmp_path):
    """Recomputing activations changes where memory goes, not what is computed: same losses, same
    evaluation (dropout's RNG is replayed in the recomputation)."""
    runs = {}
    for ckpt in (False, True):
        out = tmp_path / str(ckpt)
        runs[ckpt] = train_run(
            model_dir=str(MINILM), tokenized_dir=str(tokenized), out_model_dir=str(out / "model"),
            out_metrics=str(out / "train.json"), out_eval_metrics=str(out / "eval.json"),
            out_predictions=str(out / "pred.csv"), dataset_name="sst2", dataset=DATASET,
            model_cfg={"repo": "sentence-transformers/all-MiniLM-L6-v2"}, method_name="lora",
            method_params={"lr": 3e-3, "r": 8, "alpha": 16, "dropout": 0.1},
            training={**TRAINING, "epochs": 1, "gradient_checkpointing": ckpt},
            evaluation={"batch_size": 32, "mask_seed": 0}, seed=0, threads=2, device="cpu", precision="fp32",
            cost_per_device_hour={})
    plain, recomputed = ([p["loss"] for p in runs[c]["loss_curve"]] for c in (False, True))
    assert len(plain) == 6 and plain == pytest.approx(recomputed, rel=1e-4)
    assert runs[True]["gradient_checkpointing"] is True and runs[False]["gradient_checkpointing"] is False
    assert read_json(tmp_path / "True" / "eval.json")["accuracy"] == pytest.approx(
        read_json(tmp_path / "False" / "eval.json")["accuracy"], abs=1 / 50)


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_qlora_computes_in_the_run_precision_unless_it_overrides(precision, dtype):
    loader = ModelLoader(MINILM, "classification", 2)
    params = {"lr": 1e-3, "r": 4, "alpha": 8, "dropout": 0.0, "compute_dtype": None}
    method = build_method("qlora", params, loader.target_modules, resolve_precision(precision, CPU))
    assert {m.compute_dtype for m in _linear4bit(method.build(loader))} == {dtype}
    override = build_method("qlora", {**params, "compute_dtype": "bfloat16"}, loader.target_modules,
                            resolve_precision("fp32", CPU))
    assert {m.compute_dtype for m in _linear4bit(override.build(loader))} == {torch.bfloat16}


def _linear4bit(model):
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _contradiction(precision="fp16"):
    cfg = copy.deepcopy(smoke_config())
    cfg["precision"] = precision
    cfg["methods"]["qlora"]["compute_dtype"] = "bfloat16"
    return cfg


@pytest.mark.parametrize("precision", ["fp16"])
def test_a_method_that_cannot_run_in_the_precision_is_refused_naming_both(precision):
    with pytest.raises(ConfigError) as err:
        check_config(_contradiction(precision))
    for word in ("methods.qlora", "'fp16'", "compute_dtype"):
        assert word in str(err.value), err.value
    ok = copy.deepcopy(smoke_config())
    ok["precision"] = "bf16"
    ok["methods"]["qlora"]["compute_dtype"] = "bfloat16"
    check_config(ok)  # agreeing settings pass
    bad = copy.deepcopy(smoke_config())
    bad["precision"] = "fp8"
    with pytest.raises(ConfigError, match="precision"):
        check_config(bad)


def test_snakemake_refuses_the_contradiction_before_any_job(tmp_path):
    proc = snakemake(tmp_path, write_config(tmp_path / "bad.yaml", _contradiction()), "--dry-run", timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "invalid configuration" in out and "methods.qlora" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()
