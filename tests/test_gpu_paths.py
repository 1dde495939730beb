"""What a GPU cluster changes, checked where no GPU is: precision ``auto`` on each device class (the CUDA and CPU
capability queries are the seams), a summary that mixes memory kinds or devices, and benchmarks/gpu_check.py
run with --device cpu, so that the check a user runs on a GPU node first cannot rot."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from lorabench.analysis.comparisons import summary_by_method, unlike
from lorabench.analysis.report import write_report
from lorabench.methods import type_traits
from lorabench.methods.checks import check_config
from lorabench.runtime import precision as precision_module
from lorabench.runtime.plan import precision_reason
from lorabench.runtime.precision import resolve_precision

from conftest import REPO, smoke_config

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.mark.parametrize("capability, chosen", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                ((9, 0), "bf16")])
def test_auto_on_a_gpu_is_bf16_only_from_capability_8(monkeypatch, capability, chosen):
    monkeypatch.setattr(precision_module, "cuda_capability", lambda device: capability)
    p = resolve_precision("auto", CUDA)
    assert p.name == chosen and p.device_type == "cuda" and p.requested == "auto"
    assert f"compute capability {capability[0]}.{capability[1]}" in p.reason
    assert ("loss scaling" in p.reason) == (chosen == "fp16")
    if chosen == "fp16":  # an explicit bf16 on such a GPU would be emulated: refused, naming the key and the fix
        with pytest.raises(RuntimeError, match=r"config key 'precision': bf16.*'auto' \(fp16 with loss scaling"):
            resolve_precision("bf16", CUDA)
    else:
        assert resolve_precision("bf16", CUDA).name == "bf16"
    assert resolve_precision("fp32", CUDA).reason == "set by the config (precision: fp32)"


@pytest.mark.parametrize("features, chosen", [({"avx512_bf16": 1, "avx2": 1}, "bf16"), ({"amx_bf16": 1}, "bf16"),
                                              ({"avx2": 1, "avx512": 1}, "fp32"), ({}, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(monkeypatch, features, chosen):
    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda: features)
    p = resolve_precision("auto", CPU)
    assert p.name == chosen and not p.grad_scaler().is_enabled()  # never fp16 on a CPU
    assert ("emulated" in p.reason) == (chosen == "fp32")
    assert precision_reason("auto", CPU).startswith(f"{chosen} on cpu: ")  # the pre-run plan says the same


def test_auto_is_checked_against_every_precision_it_can_become():
    """A compute dtype that contradicts fp16 is refused when precision is auto: an older GPU would run fp16."""
    cfg = smoke_config()
    cfg["methods"] = {"lora": cfg["methods"]["lora"],
                      "qlora": {**cfg["methods"]["qlora"], "compute_dtype": "bfloat16"}}
    cfg["precision"] = "auto"
    with pytest.raises(Exception, match=r"methods.qlora.*'fp16' \('auto' gives fp16 on GPUs without native bf16\)"):
        check_config(cfg)


def _summary(kinds: dict, devices: dict) -> pd.DataFrame:
    rows = []
    for method in ("lora", "qlora"):
        for seed in range(3):
            rows.append({"dataset": "sst2", "task": "classification", "method": method, "method_type": "lora",
                         "seed": seed, "accuracy": 0.8 + 0.01 * seed, "peak_train_mem_mb": 100.0 if method == "lora"
                         else 60.0, "train_time_s": 10.0, "device": devices[method], "train_steps": 50,
                         "model_repo": "m", "memory_kind_train": kinds[method], "precision": "fp32",
                         "precision_requested": "auto"})
    return pd.DataFrame(rows)


def _predictions(tmp_path, summary):
    labels = np.zeros(20, int)
    for r in summary.itertuples():
        run = tmp_path / "runs" / r.dataset / r.method / f"seed{r.seed}"
        run.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"example_id": range(20), "label": labels, "pred": (np.arange(20) < 4).astype(int)}).to_csv(
            run / "predictions.csv", index=False)


def _report(tmp_path, summary) -> str:
    _predictions(tmp_path, summary)
    summary.to_csv(tmp_path / "summary.csv", index=False)
    write_report(tmp_path / "summary.csv", tmp_path / "runs", "lora", tmp_path / "by.csv", tmp_path / "sig.csv",
                 tmp_path / "report.md", traits=type_traits(["lora"]))
    return (tmp_path / "report.md").read_text()


def test_a_summary_mixing_memory_kinds_is_flagged_and_its_memory_not_compared(tmp_path):
    summary = _summary({"lora": "rss", "qlora": "cuda_allocated"}, {"lora": "cpu: X", "qlora": "cpu: X"})
    by = summary_by_method(summary)
    assert set(by["memory_kind_train"]) == {"rss", "cuda_allocated"}
    lora, qlora = summary[summary.method == "lora"], summary[summary.method == "qlora"]
    assert unlike(qlora, lora) == {"memory kind": "cuda_allocated against rss"}
    report = _report(tmp_path, summary)
    assert "**Mixed memory kinds**: cuda_allocated, rss." in report
    assert "qlora has no memory comparison (its memory and lora's are unlike quantities" in report
    assert "cut peak training memory" not in report and "raised peak training memory" not in report
    assert "no frontier: the runs' memory is of unlike kinds" in report


def test_like_runs_compare_and_runs_on_two_devices_say_so(tmp_path):
    same = _summary({"lora": "rss", "qlora": "rss"}, {"lora": "NVIDIA A100", "qlora": "NVIDIA A100"})
    assert unlike(same[same.method == "qlora"], same[same.method == "lora"]) == {}
    report = _report(tmp_path / "same", same)
    assert "qlora cut peak training memory by 40%" in report and "Mixed" not in report
    assert "on NVIDIA A100 (6 runs)" in report

    mixed = _summary({"lora": "cuda_allocated", "qlora": "cuda_allocated"},
                     {"lora": "NVIDIA A100", "qlora": "Tesla V100-SXM2-16GB"})
    report = _report(tmp_path / "mixed", mixed)
    assert "on NVIDIA A100 (3 runs); Tesla V100-SXM2-16GB (3 runs)" in report  # every device, not the first row's
    assert "**Mixed devices**" in report
    assert "Not like for like: devices Tesla V100-SXM2-16GB against NVIDIA A100." in report


def test_gpu_check_passes_on_the_cpu_and_lists_what_it_skipped(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--keep",
                           str(tmp_path / "check")], capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert lines[-1].startswith("gpu_check=pass checks=") and lines[-1].endswith(" failed=0"), lines[-1]
    assert int(lines[-1].split("checks=")[1].split()[0]) >= 30
    table = "\n".join(lines)
    for method in ("lora", "sparse_lora_l1", "sparse_lora_magnitude", "sparse_lora_structured", "qlora",
                   "sparselora", "hira", "qhira", "adalora", "dora", "vera", "full_ft"):
        assert f"train {method} on " in table, method
    for check in ("train lora in bf16", "train lora in fp16", "QLoRA FLOPs per token equal LoRA's",
                  "SparseLoRA narrowed FFN equals masked dense",
                  "SIGKILL and resume equals uninterrupted (deterministic)"):
        assert f"{check}" in table and "FAIL" not in table, check
    skipped = next(line for line in lines if line.startswith("skipped ("))
    assert "paged optimizer state" in skipped and "smoke pipeline through Snakemake" in skipped


def test_deterministic_mode_sets_torch_and_cublas_before_any_cuda_call(monkeypatch):
    from lorabench.runtime.device import CUBLAS_WORKSPACE, set_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
