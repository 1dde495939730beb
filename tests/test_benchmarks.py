"""The budget benchmark (how config.yaml's sizes were chosen) runs the pipeline's train job and refuses bad input."""

import os
import re
import subprocess
import sys

from conftest import REPO, SNAPSHOTS

BUDGET = [sys.executable, str(REPO / "benchmarks" / "budget.py")]


def _run(args, tmp_path, timeout=600):
    env = {**os.environ, "LORABENCH_SNAPSHOTS": str(SNAPSHOTS)}
    return subprocess.run([*BUDGET, *args, "--cache", str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env=env)


def test_budget_variants_train_and_report_over_seeds(tmp_path):
    tiny = '{"dataset": {"train_size": 48, "eval_size": 40}}'
    proc = _run(["sst2", tiny, '{"dataset": {"train_size": 48, "eval_size": 40}, "params": {"dropout": 0.0}}',
                 "--seeds", "0", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("lora sst2 {")]
    assert len(lines) == 2
    for line in lines:  # mean (interval) and one score per seed, from 40 dev sentences
        seeds = [float(x) for x in re.search(r"seeds \[([^\]]+)\]", line).group(1).split(",")]
        assert len(seeds) == 2 and all(0.0 <= s <= 1.0 and round(s * 40) == s * 40 for s in seeds)
        assert "3 steps" in line
    best = re.search(r"^best=(.+) score=([0-9.]+)$", proc.stdout.strip().splitlines()[-1])
    assert best and 0.0 <= float(best.group(2)) <= 1.0


def test_budget_refuses_a_bad_variant_before_training(tmp_path):
    proc = _run(["sst2", '{"dataset": {"train_size": -5}}'], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "datasets.sst2.train_size" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()
    proc = _run(["sst2", '{"dataset": {}, "optimizer": "sgd"}'], tmp_path, timeout=120)
    assert proc.returncode != 0 and "optimizer" in proc.stderr and "allowed: dataset, training, params" in proc.stderr


def test_against_commit_runs_the_same_workload_with_the_curves_off(tmp_path):
    """benchmarks/against_commit.py: the base tree is the commit's files, the two configs differ in the curves
    only (here the base is this commit), and the config it runs this tree on is one the validator accepts."""
    import yaml

    from lorabench.config import validate_config

    sys.path.insert(0, str(REPO / "benchmarks"))
    import against_commit

    tree = against_commit.base_tree("HEAD", tmp_path)
    assert (tree / "Snakefile").exists() and (tree / "src" / "lorabench" / "__init__.py").exists()
    config = yaml.safe_load((tree / "config.yaml").read_text())
    base = against_commit.workload(config, ["sst2"])
    head = against_commit.workload(config, ["sst2"], curves=False)
    assert list(head["datasets"]) == ["sst2"] and "base" not in head["methods"]  # base trains on WikiText-2 only
    assert "wikitext2" in config["datasets"] and "base" in config["methods"]  # the cut made a copy
    found = against_commit.differences(base, head)
    assert found and all(line.split(":")[0] in {"evaluation.curve_points", *(f"datasets.sst2.{k}" for k in
                                                against_commit.CURVE_KEYS)} for line in found), found
    assert "holdout_size" not in head["datasets"]["sst2"] and "holdout_size" in config["datasets"]["sst2"]
    checked = validate_config(head)
    assert checked["evaluation"]["curve_points"] == 0 and checked["datasets"]["sst2"]["holdout_size"] is None
