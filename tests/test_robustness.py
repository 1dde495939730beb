"""Nothing lost: resume after SIGKILL, determinism, divergence, concurrent cache writers, safe loading."""

import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorabench.execution.attempts import RepeatedFailure
from lorabench.execution.jobs import train_run
from lorabench.execution.trainer import DivergenceError, LossLog, Progress, RunId
from lorabench.io import sweep_stale_temps, write_json
from lorabench.loading.data import load_tokenized, tokenize_dataset

from conftest import MINILM, REPO
from conftest import SST2_DATASET as DATASET

TRAINING = {"epochs": 2, "batch_size": 8, "grad_accum_steps": 1, "warmup_ratio": 0.1, "weight_decay": 0.01,
            "max_grad_norm": 1.0, "subset_seed": 0, "checkpoint_every": 1}
METHOD = {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.1, "sparsity": 0.5, "prune_start_frac": 0.1,
          "prune_end_frac": 0.6}
TIMING = {"train_time_s", "train_time_per_epoch_s", "epoch_times_s", "train_tokens_per_s", "train_examples_per_s",
          "peak_train_mem_mb", "load_peak_mem_mb", "device_hours", "cost_usd", "resumed_from_step", "job_phases_s",
          "curve_eval_time_s", "attempts"}


def _kwargs(tokenized, out: Path, seed=0, method="sparse_lora_magnitude", model_dir=MINILM):
    return dict(model_dir=str(model_dir), tokenized_dir=str(tokenized), out_model_dir=str(out / "model"),
                out_metrics=str(out / "train_metrics.json"), out_eval_metrics=str(out / "eval_metrics.json"),
                out_predictions=str(out / "predictions.csv"), dataset_name="sst2", dataset=DATASET,
                model_cfg={"repo": "sentence-transformers/all-MiniLM-L6-v2"}, method_name=method,
                method_params=METHOD, training=TRAINING, evaluation={"batch_size": 32, "mask_seed": 0, "curve_points": 6}, seed=seed,
                threads=1, device="cpu", cost_per_device_hour={}, checkpoint_dir=str(out / "ckpt"))


def _comparable(metrics: dict) -> dict:
    """Everything but timings; the held-out curve point for point, without its training time so far."""
    out = {k: v for k, v in metrics.items() if k not in TIMING}
    out["heldout_curve"] = [{k: v for k, v in p.items() if k != "train_time_s"} for p in metrics["heldout_curve"]]
    return out


def _start(kwargs) -> subprocess.Popen:
    code = "import json, sys; from lorabench.execution.jobs import train_run; train_run(**json.loads(sys.argv[1]))"
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["progress"]["step"]
    except Exception:  # not written yet, or being replaced right now
        return 0


def test_sigkilled_training_resumes_to_identical_results(tokenized, tmp_path):
    reference = train_run(**_kwargs(tokenized, tmp_path / "reference"))
    total = reference["train_steps"]
    assert total == 24

    out = tmp_path / "killed"
    rng = random.Random(os.getpid())
    kill_at = sorted(rng.sample(range(2, total - 2), 2))
    for k in kill_at:  # kill twice, at random steps, then let the rerun finish
        proc = _start(_kwargs(tokenized, out))
        deadline = time.time() + 120
        while _checkpoint_step(out / "ckpt" / "checkpoint.pt") < k and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "train_metrics.json").exists(), "a killed run must not look complete"
    killed = json.loads((out / "ckpt" / "attempts.json").read_text())["attempts"]
    assert len(killed) == 2 and all(a["device_s"] > 0 and a["to_step"] >= k for a, k in zip(killed, kill_at))
    resumed = train_run(**_kwargs(tokenized, out))
    assert kill_at[-1] <= resumed["resumed_from_step"] < total  # where the last kill left its checkpoint
    # Billed device time covers every attempt: the killed ones up to their last step, then the one that finished.
    assert resumed["attempts"] == 3
    assert resumed["device_hours"] * 3600 > sum(a["device_s"] for a in killed)
    assert resumed["cost_usd"] == 0.0  # no price given for the CPU here
    assert [p["step"] for p in reference["heldout_curve"]] == [4, 8, 12, 16, 20, 24]
    assert _comparable(resumed) == _comparable(reference)  # the held-out curve too, point for point
    a, b = load_file(out / "model" / "adapter_model.safetensors"), load_file(
        tmp_path / "reference" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "ckpt").exists()  # removed once the run completed


def test_same_seed_same_results_other_seed_differs(tokenized, tmp_path):
    first = train_run(**_kwargs(tokenized, tmp_path / "a", seed=3, method="lora"))
    again = train_run(**_kwargs(tokenized, tmp_path / "b", seed=3, method="lora"))
    other = train_run(**_kwargs(tokenized, tmp_path / "c", seed=4, method="lora"))
    assert _comparable(first) == _comparable(again)
    assert first["loss_curve"] != other["loss_curve"]


def test_nan_loss_stops_with_a_message_and_no_outputs(tokenized, tmp_path):
    poisoned = shutil.copytree(MINILM, tmp_path / "poisoned")
    weights = load_file(poisoned / "model.safetensors")
    key = next(k for k in weights if k.endswith("embeddings.LayerNorm.weight"))
    weights[key][0] = float("nan")
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "run"
    with pytest.raises(DivergenceError) as err:
        train_run(**_kwargs(tokenized, out, seed=7, method="lora", model_dir=poisoned))
    msg = str(err.value)
    for part in ("method=lora", "dataset=sst2", "seed=7", "step 1", "nan"):
        assert part in msg, msg
    assert not (out / "train_metrics.json").exists() and not (out / "model").exists()
    # A retry with the same settings on the same device (Snakemake's retries) fails at once, saying why, instead of
    # spending the device time again; a changed setting tries again.
    with pytest.raises(RepeatedFailure, match=r"failed with DivergenceError on cpu.*same settings: loss is nan"):
        train_run(**_kwargs(tokenized, out, seed=7, method="lora", model_dir=poisoned))
    changed = _kwargs(tokenized, out, seed=7, method="lora", model_dir=poisoned)
    changed["method_params"] = {**METHOD, "lr": 1e-3}
    with pytest.raises(DivergenceError):
        train_run(**changed)


def test_losses_are_read_in_batches_and_a_non_finite_one_is_named_by_its_step():
    progress = Progress()
    log = LossLog(progress, RunId("lora", "sst2", 0))
    one = torch.tensor(1.0)
    due = [log.add(step, 0, 1e-3, one * step, one * step) for step in range(1, LossLog.READ_EVERY + 1)]
    assert due == [False] * (LossLog.READ_EVERY - 1) + [True] and progress.loss_curve == []  # nothing read yet
    log.read()
    assert [p["loss"] for p in progress.loss_curve] == list(range(1, LossLog.READ_EVERY + 1))
    log.add(33, 0, 1e-3, one, one)
    log.add(34, 0, 1e-3, one, torch.tensor(float("inf")))  # the total (with regularization) is what diverges
    log.add(35, 0, 1e-3, torch.tensor(float("nan")), torch.tensor(float("nan")))
    with pytest.raises(DivergenceError, match=r"loss is inf at optimizer step 34 \(method=lora dataset=sst2 seed=0\)"):
        log.read()
    assert progress.loss_curve[-1]["step"] == 33


def test_a_killed_writers_temp_files_are_swept_and_a_live_writers_are_kept(tmp_path):
    final = tmp_path / "train_metrics.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = __import__("socket").gethostname()
    stale_file = tmp_path / f".train_metrics.json.{host}.{int(dead.stdout)}.abc.tmp"
    stale_dir = tmp_path / f".train_metrics.json.{host}.{int(dead.stdout)}.def.tmp"
    live = tmp_path / f".train_metrics.json.{host}.{os.getpid()}.ghi.tmp"
    other_host = tmp_path / f".train_metrics.json.elsewhere.{int(dead.stdout)}.jkl.tmp"
    stale_file.write_text("{")
    (stale_dir / "inner").mkdir(parents=True)
    live.write_text("{")
    other_host.write_text("{")
    write_json(final, {"a": 1})
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other_host.exists() and json.loads(final.read_text()) == {"a": 1}
    live.unlink()
    assert sweep_stale_temps(final) == []


def _tokenize_into(args):
    raw, out, i = args
    tokenize_dataset(DATASET, MINILM, raw, 0, out)
    return i


def test_concurrent_writers_of_one_cache_leave_it_complete(tokenized, tmp_path):
    raw = tokenized.parent / "raw"
    out = tmp_path / "cache"
    with mp.get_context("spawn").Pool(2) as pool:
        assert sorted(pool.map(_tokenize_into, [(raw, out, i) for i in range(4)])) == [0, 1, 2, 3]
    assert sorted(p.name for p in out.iterdir()) == ["eval", "heldout", "meta.json", "train"]
    assert len(load_tokenized(out, "train")) == 96 and len(load_tokenized(out, "eval")) == 32
    assert len(load_tokenized(out, "heldout")) == 48
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_weights_load_safely_and_no_shell_is_built_from_config():
    sources = list((REPO / "src").rglob("*.py")) + list((REPO / "workflow").rglob("*.py"))
    text = {p: p.read_text() for p in sources}
    for path, code in text.items():
        assert "trust_remote_code=True" not in code, path
        for call in re.findall(r"torch\.load\([^)]*\)", code):
            assert "weights_only=True" in call, (path, call)
        assert "os.system(" not in code and "shell=True" not in code, path
    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk")) + (REPO / "Snakefile").read_text()
    assert "shell:" not in rules and "run:" not in rules  # every rule runs a script; no command strings
    assert 'kwargs.setdefault("use_safetensors", True)' in (REPO / "src/lorabench/loading/models.py").read_text()
