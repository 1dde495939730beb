"""Before its first job a run says what it will do: runs, the precision auto resolves to and why, and how long
the config took on the machines it was measured on."""

import re

import pytest
import torch
import yaml

from lorabench.runtime.plan import RUN_TIMES, machine_class, measured_times, plan_lines
from lorabench.runtime.precision import native_bf16

from conftest import REPO, run_pairs, smoke_config, snakemake, write_config


def test_every_run_time_names_a_shipped_config_and_a_known_class():
    entries = yaml.safe_load(RUN_TIMES.read_text())
    assert entries and all((REPO / e["config"]).exists() for e in entries)
    assert {e["cpu_class"] for e in entries} <= {"avx512_bf16", "avx2", "cpu", "cuda"}
    assert all(e["minutes"] > 0 and (REPO / "docs" / "measurements" / e["source"]).exists() for e in entries)


def test_the_plan_says_why_auto_chose_its_precision_and_quotes_the_measured_times():
    cfg = {**smoke_config(), "precision": "auto", "device": "cpu"}
    lines = plan_lines(cfg, "config.yaml", 75, 25)
    assert lines[0].startswith("lorabench: 75 training runs (1 seed) and 25 other torch jobs")
    cpu = torch.device("cpu")
    if native_bf16(cpu):
        assert "bf16 on" in lines[1] and "native bf16" in lines[1]
    else:
        assert "fp32 on" in lines[1] and "no AVX512-BF16 or AMX" in lines[1] and "slower than fp32" in lines[1]
    quoted = [line for line in lines if "config.yaml from scratch took" in line]
    assert len(quoted) == len(measured_times("config.yaml")) >= 2
    here = machine_class(cpu)
    assert any("this machine's class" in line for line in quoted) == (here in {e["cpu_class"] for e in
                                                                            measured_times("config.yaml")})
    assert plan_lines(cfg, "my.yaml", 1, 0)[-1] == ("lorabench: no measured run time of my.yaml "
                                                    "(docs/measurements/run-times.yaml)")


def test_a_cuda_config_submitted_from_a_machine_without_one_is_planned_not_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    lines = plan_lines({**smoke_config(), "device": "cuda"}, "configs/paper.yaml", 9, 3)
    assert "resolved by each job on its GPU (none visible here)" in lines[-1]


def test_a_dry_run_prints_the_plan_before_anything(tmp_path):
    proc = snakemake(tmp_path, write_config(tmp_path / "smoke.yaml", smoke_config()), "-n", "--quiet", "rules",
                     timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = [line for line in proc.stderr.splitlines() if line.startswith("lorabench: ")]
    runs = len(run_pairs(smoke_config()))  # one seed
    assert plan[0].startswith(f"lorabench: {runs} training runs (1 seed)") and "precision: fp32" in plan[1]
    assert plan[-1] == "lorabench: no measured run time of " + str(tmp_path / "smoke.yaml") + \
        " (docs/measurements/run-times.yaml)"  # a config of the user's own, outside the repository


def test_seeds_grouped_per_job_plan_one_job_per_chunk_with_every_seed_s_outputs(tmp_path):
    from lorabench.config import seed_chunks

    assert seed_chunks([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4]]
    assert seed_chunks([0, 1, 2], 3, local=False) == [[0], [1], [2]]  # a cluster: one job per seed
    cfg = {**smoke_config(), "seeds": [0, 1, 2], "seeds_per_job": 2}
    proc = snakemake(tmp_path, write_config(tmp_path / "grouped.yaml", cfg), "-n", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = len(run_pairs(cfg))
    plan = [line for line in proc.stderr.splitlines() if line.startswith("lorabench: ")]
    assert plan[0].startswith(f"lorabench: {3 * runs} training runs (3 seeds) in {2 * runs} jobs of up to 2 seeds")
    jobs = re.findall(r"^rule (train\w*):\n(?:    .*\n)*?    output: (.*)$", proc.stdout, re.M)
    assert sorted({rule for rule, _ in jobs}) == ["train_seeds0_1", "train_seeds2"]
    assert sum(rule == "train_seeds0_1" for rule, _ in jobs) == runs
    outputs = {path for _, out in jobs for path in out.split(", ")}
    for dataset, method in run_pairs(cfg):
        for seed in cfg["seeds"]:
            run = f"results/runs/{dataset}/{method}/seed{seed}"
            assert {f"{run}/model", f"{run}/train_metrics.json", f"{run}/predictions.csv"} <= outputs
