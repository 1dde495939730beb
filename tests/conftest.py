"""Shared fixtures. Tests read the real snapshots from ../shared/hf (or $LORABENCH_SNAPSHOTS)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(os.environ.get("LORABENCH_SNAPSHOTS", REPO.parent / "shared" / "hf"))
if not SNAPSHOTS.is_absolute():
    SNAPSHOTS = (REPO / SNAPSHOTS).resolve()
MINILM = SNAPSHOTS / "models" / "sentence-transformers" / "all-MiniLM-L6-v2"


def pytest_configure(config):
    if not SNAPSHOTS.is_dir():
        raise pytest.UsageError(
            f"snapshot folder {SNAPSHOTS} not found: the tests use real models and data from ../shared/hf; "
            "set LORABENCH_SNAPSHOTS=PATH to a folder laid out like it"
        )


def load_yaml(path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def smoke_config() -> dict:
    cfg = load_yaml(REPO / "configs" / "smoke.yaml")
    cfg["snapshots"] = str(SNAPSHOTS)
    return cfg


def run_pairs(cfg: dict) -> set[tuple[str, str]]:
    """(dataset, method) pairs a config runs: a method's `datasets` restricts it."""
    return {(d, m) for m, params in cfg["methods"].items() for d in params.get("datasets", cfg["datasets"])}


def snakemake(workdir: Path, configfile: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke config run once through Snakemake, logged to TensorBoard and MLflow (test_tracking.py reads
    them back; tests that rerun it without tracking show that tracking reruns nothing); returns the work
    directory."""
    workdir = tmp_path_factory.mktemp("smoke")
    cfg = write_config(workdir / "smoke.yaml", {**smoke_config(), "tracking": ["tensorboard", "mlflow"]})
    proc = snakemake(workdir, cfg)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (workdir / "results" / "logs").rglob("*.log")
                         if "Error" in p.read_text())
        pytest.fail(f"smoke run failed:\n{proc.stderr[-5000:]}\n{logs}")
    return workdir


@pytest.fixture(scope="session")
def minilm_dir():
    return MINILM


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


SST2_DATASET = {"task": "classification", "text_field": "sentence", "label_field": "label", "train_split": "train",
                "eval_split": "validation", "train_size": 96, "eval_size": 32, "max_length": 32, "num_labels": 2,
                "holdout_size": 48, "truncation": "head", "head_fraction": 0.25}


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory):
    """96 SST-2 training and 32 validation sentences, and 48 held out of the train split, tokenized for MiniLM
    (SST2_DATASET)."""
    import pandas as pd

    from lorabench.loading.data import tokenize_dataset

    root = tmp_path_factory.mktemp("data")
    raw = root / "raw"
    raw.mkdir()
    for split in ("train", "validation"):
        src = SNAPSHOTS / "datasets/stanfordnlp/sst2/data" / f"{split}-00000-of-00001.parquet"
        pd.read_parquet(src).to_parquet(raw / f"{split}.parquet")
    tokenize_dataset(SST2_DATASET, MINILM, raw, 0, root / "tok")
    return root / "tok"


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory):
    """A random-initialized DistilBERT with the masked-LM head, MiniLM's tokenizer (the same uncased
    30,522-token vocabulary as distilbert-base-uncased): code paths, not accuracy."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    folder = tmp_path_factory.mktemp("distilbert")
    config = DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                              architectures=["DistilBertForMaskedLM"])
    DistilBertForMaskedLM(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(MINILM / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A random-initialized Llama (SwiGLU FFN, grouped-query attention) with a 1,000-token vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
