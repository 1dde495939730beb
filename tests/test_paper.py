"""configs/paper.yaml, the brief's DistilBERT experiment, run end to end here: every method on every dataset, on
a random-initialized DistilBERT (MiniLM's tokenizer has the identical uncased 30,522-token vocabulary), scaled
down with overrides. The weights are random: this proves code paths and sane outputs, not accuracy."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest

from conftest import REPO, SNAPSHOTS, load_yaml, run_pairs, snakemake, write_config

pytestmark = pytest.mark.e2e


def tiny_paper_config(snapshots) -> dict:
    cfg = load_yaml(REPO / "configs" / "paper.yaml")
    cfg.update(snapshots=str(snapshots), seeds=[0], threads=1)
    for name, ds in cfg["datasets"].items():
        ds.update(train_size=16, eval_size=8, max_length=32)
        if ds["task"] == "language_modeling":
            ds.update(train_split="validation", stride=32)  # the snapshot has no WikiText-2 train split
    # the tiny model has 2 layers; the default keeps the first and the last dense, leaving none sparse
    cfg["methods"]["sparselora"]["dense_layers"] = [0]
    cfg["training"].update(epochs=1, max_steps=2, batch_size=8, checkpoint_every=0)
    cfg["evaluation"].update(batch_size=8, latency_examples=2, timing_repeats=1, throughput_batch_size=4,
                             throughput_min_time_s=0)
    return cfg


def test_paper_config_runs_every_method_on_every_dataset_with_distilbert(tiny_distilbert, tmp_path):
    hf = tmp_path / "hf"
    (hf / "models").mkdir(parents=True)
    (hf / "datasets").symlink_to(SNAPSHOTS / "datasets")
    shutil.copytree(tiny_distilbert, hf / "models" / "distilbert-base-uncased")
    cfg = tiny_paper_config(hf)
    proc = snakemake(tmp_path, write_config(tmp_path / "paper.yaml", cfg), timeout=1500)
    logs = "\n".join(p.read_text()[-1500:] for p in (tmp_path / "results" / "logs").rglob("*.log")
                     if "Error" in p.read_text())
    assert proc.returncode == 0, proc.stderr[-4000:] + logs

    df = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert set(zip(df["dataset"], df["method"])) == run_pairs(cfg)
    assert {"sparselora", "qlora", "hira", "full_ft", "base"} <= set(df["method"])
    assert (df["model_repo"] == "distilbert-base-uncased").all()
    cls, lm = df[df["task"] == "classification"], df[df["task"] == "language_modeling"]
    assert cls["accuracy"].between(0, 1).all()
    # masked-LM perplexity of a random 30,522-token model: finite and near the vocabulary size, not 0 or inf
    assert lm["perplexity"].map(math.isfinite).all() and lm["perplexity"].between(1e3, 1e6).all()
    trained = df[df["method"] != "base"]
    assert (trained["train_steps"] == 2).all() and trained["final_train_loss"].map(math.isfinite).all()
    # QLoRA stored its DistilBERT base in 4 bits, kept the tied vocab_projector and pre_classifier/classifier full
    qlora = df[df["method"] == "qlora"]
    assert (qlora["base_weight_bits"] == 4).all()
    assert (qlora["head_params"][qlora["task"] == "classification"] > 0).all()
    assert (df.loc[df["method"] == "sparselora", "ffn_sparse_layers"] > 0).all()
