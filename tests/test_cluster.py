"""The SLURM profile and conda environment (lint), and the smoke config through a real Slurm (marked slurm)."""

import re
import subprocess
import sys
import time
import tomllib

import pandas as pd
import pytest
import yaml

from conftest import REPO, smoke_config, write_config

# Columns that must match between a local and a SLURM run (everything but timings, memory and cost).
DETERMINISTIC = ["dataset", "method", "seed", "accuracy", "macro_f1", "perplexity", "first_train_loss",
                 "final_train_loss", "train_steps", "train_tokens_seen", "trainable_params", "total_params",
                 "adapter_sparsity", "effective_rank", "flops_per_example", "train_flops"]


def test_slurm_profile_is_complete():
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["jobs"] > 0
    assert profile["configfile"] == "configs/paper.yaml"
    defaults = profile["default-resources"]
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(defaults)
    for rule in ("train", "efficiency"):  # the GPU rules name the GPU partition; every other rule gets the CPU one
        assert profile["set-resources"][rule]["gpu"] == 1
        assert profile["set-resources"][rule]["slurm_partition"] != defaults["slurm_partition"]
    for rule in ("aggregate", "report", "plot", "explorer"):
        assert not {"gpu", "gres", "slurm_partition"} & set(profile["set-resources"].get(rule, {}))
    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    assert "localrules: fetch_model, fetch_dataset" in rules


def test_conda_env_pins_match_pyproject():
    env = yaml.safe_load((REPO / "envs" / "lorabench.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = dict(p.split("==") for p in pip)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = dict(p.split("==") for p in project["dependencies"] + extras["test"] + extras["tracking"]
                  if not p.startswith("lorabench["))  # the test extra pulls in the tracking extra by name
    assert pinned == wanted
    assert "python=3.11" in env["dependencies"]


def _test_profile(tmp_path):
    """The repo profile with the test's overrides: local partition, no account, no GPU, small memory.

    Many queued jobs on purpose: Slurm starts the next one the moment a CPU frees, whereas Snakemake
    only notices a finished job at its next status check (the plugin backs off by 10 s per idle check).
    """
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    profile.pop("configfile")
    profile.update({"jobs": 50, "retries": 0, "latency-wait": 5, "slurm-no-account": True,
                    "slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 2})
    profile["default-resources"] = {"slurm_partition": "debug", "runtime": 30, "mem_mb": 2000}
    # The partitions stay as the profile routes them (the test cluster has a 'gpu' partition without GPUs).
    profile["set-resources"] = {rule: {"mem_mb": 3000, "runtime": 30,
                                       **{k: v for k, v in res.items() if k == "slurm_partition"}}
                                for rule, res in profile["set-resources"].items()}
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _snakemake_slurm(workdir, profile, configfile, *targets, **kw):
    # Targets go first: --configfile takes several values and would swallow them.
    cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--profile", str(profile), "--configfile", str(configfile)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="module")
def slurm():
    proc = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "start_slurm.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"could not start Slurm:\n{proc.stdout}\n{proc.stderr}")


@pytest.mark.slurm
@pytest.mark.e2e
def test_smoke_through_slurm_matches_local_run(slurm, smoke_run, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    # SST-2 only (a third of the smoke run's jobs): what is checked is that jobs go through sbatch and give the
    # local run's results, which one dataset shows as well as three.
    smoke = smoke_config()
    smoke["datasets"] = {"sst2": smoke["datasets"]["sst2"]}
    smoke["methods"] = {m: {**p, **({"datasets": ["sst2"]} if "datasets" in p else {})}
                        for m, p in smoke["methods"].items() if "sst2" in p.get("datasets", ["sst2"])}
    cfg = write_config(tmp_path / "smoke.yaml", smoke)
    proc = _snakemake_slurm(workdir, _test_profile(tmp_path), cfg)
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"Submitted (batch )?job \d+", out) or "SLURM" in out  # it really went through sbatch
    assert list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    # reindex: an SST-2-only summary has no perplexity column
    via_slurm = pd.read_csv(workdir / "results" / "summary.csv").reindex(columns=DETERMINISTIC)
    local = pd.read_csv(smoke_run / "results" / "summary.csv").reindex(columns=DETERMINISTIC)
    local = local[local["dataset"] == "sst2"].reset_index(drop=True)
    assert len(via_slurm) == len(smoke["methods"]) * len(smoke["seeds"])
    pd.testing.assert_frame_equal(via_slurm, local)
    for preds in (smoke_run / "results" / "runs" / "sst2").rglob("predictions.csv"):
        other = workdir / preds.relative_to(smoke_run)
        assert preds.read_text() == other.read_text(), preds


@pytest.mark.slurm
@pytest.mark.e2e
def test_scancelled_job_is_reported_and_a_rerun_completes(slurm, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    cfg = write_config(tmp_path / "smoke.yaml", smoke_config())
    target = "results/runs/wikitext2/full_ft/seed0/train_metrics.json"
    profile = _test_profile(tmp_path)
    proc = _snakemake_slurm(workdir, profile, cfg, target)
    job_ids, deadline = [], time.time() + 600
    while not job_ids and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        # The plugin tags each job with --comment rule_<name>_wildcards_...: cancel the training job.
        listing = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], capture_output=True, text=True)
        job_ids = [ln.split()[0] for ln in listing.stdout.splitlines() if "rule_train" in ln]
    if not job_ids:
        proc.kill()
        pytest.fail(f"no SLURM training job started:\n{proc.communicate()[0][-3000:]}")
    subprocess.run(["scancel", *job_ids], check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "Error in rule train" in out and "CANCELLED" in out, out[-3000:]
    assert not (workdir / target).exists()
    rerun = _snakemake_slurm(workdir, profile, cfg, target)
    out, _ = rerun.communicate(timeout=1200)
    assert rerun.returncode == 0, out[-4000:]
    assert (workdir / target).exists()


def _jobs_of(run_output: str) -> list[tuple[str, str]]:
    """(partition, rule) of every Slurm job of the Snakemake run whose output this is (its run ID names them)."""
    run_id = re.search(r"SLURM run ID: (\S+)", run_output).group(1)
    listing = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j|%P|%k"], capture_output=True, text=True,
                             check=True).stdout
    return [(part, comment.split("_wildcards")[0].removeprefix("rule_"))
            for name, part, comment in (ln.split("|", 2) for ln in listing.splitlines()) if name == run_id]


@pytest.mark.slurm
@pytest.mark.e2e
def test_cpu_rules_go_to_the_cpu_partition_and_torch_rules_to_the_gpu_one(slurm, tmp_path):
    smoke = smoke_config()
    smoke["datasets"] = {"sst2": smoke["datasets"]["sst2"]}
    smoke["methods"] = {"lora": smoke["methods"]["lora"]}
    cfg = write_config(tmp_path / "smoke.yaml", smoke)
    (tmp_path / "work").mkdir()
    proc = _snakemake_slurm(tmp_path / "work", _test_profile(tmp_path), cfg,
                            "results/runs/sst2/lora/seed0/train_metrics.json")
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out[-4000:]
    jobs = _jobs_of(out)
    assert ("debug", "tokenize") in jobs and ("gpu", "train") in jobs, jobs
    assert {rule for part, rule in jobs if part == "gpu"} == {"train"}, jobs  # no CPU rule in the GPU partition


@pytest.mark.slurm
def test_a_placeholder_account_is_refused_before_anything_is_submitted(slurm, tmp_path):
    profile = _test_profile(tmp_path)
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    settings.pop("slurm-no-account")
    settings["default-resources"]["slurm_account"] = yaml.safe_load(
        (REPO / "slurm" / "config.yaml").read_text())["default-resources"]["slurm_account"]  # as shipped
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    before = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True).stdout
    (tmp_path / "work").mkdir()
    proc = _snakemake_slurm(tmp_path / "work", profile, write_config(tmp_path / "smoke.yaml", smoke_config()))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    assert "profile key 'default-resources: slurm_account' is the placeholder 'YOUR-ACCOUNT'" in out, out[-3000:]
    assert "Submitted" not in out and not (tmp_path / "work" / "resources").exists()
    assert subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True).stdout == before
