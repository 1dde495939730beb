"""Kill a real Snakemake run at random moments: does it lose anything?   .venv/bin/python benchmarks/chaos.py

Runs a small config twice through Snakemake: once without interruption, once SIGKILLed (the whole process
group: Snakemake and every job it started) at random moments, at least ``--kills`` times, each time started
again as a user would (``snakemake --unlock``, since the killed run's lock stays, then ``--rerun-incomplete``),
then left to finish. The config is configs/smoke.yaml's settings for two
methods, two datasets and two seeds (``--methods``, ``--datasets``, ``--seeds`` change it), with a checkpoint
after every optimizer step, so that a kill lands in training as often as anywhere else.

At the end it checks that
- ``results/summary.csv`` equals the uninterrupted run's in every column but the timings (``TIMING``) and
  ``resumed_from_step``; memory peaks, measured from resident memory, within 10% (``MEMORY_RTOL``);
- no file or folder is under ``results/`` or ``resources/`` that the uninterrupted run does not have (no
  partial output, no temporary file);
- no job that had completed ran again: Snakemake's own logs (``.snakemake/log/``) name each job it started and
  each it finished; a job started after an earlier attempt logged it finished is a rerun of a completed job.

The last line is

    kills=N reruns_of_completed=R summary_equal=yes|no leftovers=L jobs_started=J uninterrupted_jobs=U
    seeds_retrained=T seeds_seen=S seeds_finished_before_a_kill=K

(jobs_started - uninterrupted_jobs = the jobs a kill interrupted and Snakemake ran again). With
``--seeds-per-job 2`` each process trains two seeds (config ``seeds_per_job``), and a kill between them must
lose only the unfinished one: while the run goes, the benchmark notes each seed's train_metrics.json when it
first appears (S of them; K of them before a kill that came while their job still had seeds to train; the
first kill lands there on purpose), and T counts those replaced later, i.e. trained again; it must be 0.
tests/test_chaos.py runs it at its smallest size, both ways. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(os.environ.get("LORABENCH_SNAPSHOTS", REPO.parent / "shared" / "hf")).resolve()

#: Columns that are timings, or computed from one (device-hours, cost), and so differ between any two runs.
TIMING = re.compile(r"(^|_)(s|ms|per_s|time|latency|throughput|device_hours|cost|usd)(_|$)")
#: Where a resumed run says it resumed, and how many attempts it took (execution/attempts.py): differ by design.
RESUMED = {"resumed_from_step", "attempts"}
#: Memory peaks, measured from the process's resident memory on CPU: two processes running the same job differ
#: by a few percent (docs/methodology.md, "Memory"), so these must agree within MEMORY_RTOL, not exactly.
MEMORY = re.compile(r"_mem_mb$")
MEMORY_RTOL = 0.10


def chaos_config(methods=("lora", "full_ft"), datasets=("sst2", "imdb"), seeds=(0, 1),
                 snapshots: Path = SNAPSHOTS, seeds_per_job: int = 1) -> dict:
    """configs/smoke.yaml cut to ``methods`` x ``datasets`` x ``seeds``, a checkpoint after every step;
    ``seeds_per_job`` seeds trained in each process."""
    cfg = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    cfg["snapshots"] = str(snapshots)
    cfg["seeds"] = list(seeds)
    cfg["seeds_per_job"] = seeds_per_job
    cfg["datasets"] = {d: cfg["datasets"][d] for d in datasets}
    cfg["methods"] = {m: {k: v for k, v in cfg["methods"][m].items() if k != "datasets"} for m in methods}
    cfg["baseline_method"] = methods[0]
    cfg["training"]["checkpoint_every"] = 1
    cfg.pop("tracking", None)
    return cfg


def snakemake_cmd(workdir: Path, configfile: Path, cores: int, tree: Path = REPO) -> list[str]:
    """Snakemake on ``tree``'s Snakefile (default: this tree's), in ``workdir``."""
    return [sys.executable, "-m", "snakemake", "-s", str(tree / "Snakefile"), "-d", str(workdir),
            "--configfile", str(configfile), "--cores", str(cores), "--rerun-incomplete"]


def run_through(workdir: Path, configfile: Path, cores: int, log: Path, timeout: float | None = None,
                tree: Path = REPO, env: dict | None = None) -> float:
    """One uninterrupted run of ``tree``'s workflow (with ``env``, default this process's); its wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(snakemake_cmd(workdir, configfile, cores, tree), stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env)
    if proc.returncode:
        raise SystemExit(f"the run in {workdir} failed after {time.perf_counter() - start:.0f} s; see {log}")
    return time.perf_counter() - start


def finished_seeds(workdir: Path, skip=()) -> dict[str, bytes]:
    """Each run's train_metrics.json present now, by path: its bytes (timings make every training's differ).
    Paths in ``skip`` are left out unread."""
    found = {}
    for path in (workdir / "results" / "runs").glob("*/*/seed*/train_metrics.json"):
        key = str(path.relative_to(workdir))
        if key in skip:
            continue
        try:
            found[key] = path.read_bytes()
        except OSError:  # removed between the listing and the read: Snakemake clearing a killed job's outputs
            pass
    return found


def _mid_job(seen: dict, seeds: list) -> list[str]:
    """The seeds seen while another seed of their (dataset, method) had not finished."""
    done = {Path(p).parts[2:5] for p in seen}  # (dataset, method, "seed<n>")
    return [p for p in seen if any((*Path(p).parts[2:4], f"seed{s}") not in done for s in seeds)]


def _wait_watching(proc: subprocess.Popen, seconds: float, workdir: Path, seen: dict,
                   until_mid_job: list | None = None) -> int | None:
    """Wait up to ``seconds`` for ``proc``, noting every seed's train_metrics.json the first time it appears
    (``seen``: path -> [bytes, whether a kill came while its job had seeds left]); its exit status, or None if it
    still runs. ``until_mid_job`` (the config's seeds): stop waiting as soon as a seed finished before another of
    its (dataset, method)."""
    end = time.monotonic() + seconds
    while True:
        for path, content in finished_seeds(workdir, skip=seen).items():  # every 0.2 s: read only new ones
            seen[path] = [content, False]
        if until_mid_job and _mid_job(seen, until_mid_job):
            return None
        try:
            return proc.wait(timeout=max(min(0.2, end - time.monotonic()), 0.01))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= end:
                return None


def seeds_retrained(workdir: Path, seen: dict) -> list[str]:
    """Runs whose metrics, once written, were replaced: trained again after a kill. Seeds grouped in one job
    (seeds_per_job) must have none; with one job per seed, a kill after a job's last write and before Snakemake
    records it as done reruns the job (Snakemake's own rule for an unfinished job)."""
    final = finished_seeds(workdir)
    return sorted(path for path, (content, _) in seen.items() if final.get(path) != content)


def kill_and_restart(workdir: Path, configfile: Path, cores: int, kills: int, wall: float, total_jobs: int,
                     rng: np.random.Generator, timeout: float, seen: dict | None = None,
                     between_seeds: bool = False) -> int:
    """Start the run and SIGKILL its process group after a random delay, again until ``kills`` kills landed on a
    live run, then let it finish. Each delay is drawn from 1 s up to 0.8 x the time the run still needs (from
    the uninterrupted run's ``wall`` and the share of its ``total_jobs`` not yet finished), so the kills spread
    over start-up, every stage and the end. Returns the kills that landed (fewer if the run finished first);
    ``seen`` collects each seed's first metrics (``seeds_retrained``). ``between_seeds`` (seeds grouped in
    one job): the first kill lands right after a job's first seed finished, the others at random moments."""
    seen = {} if seen is None else seen
    seeds = yaml.safe_load(configfile.read_text())["seeds"]
    done, attempt = 0, 0
    deadline = time.monotonic() + timeout
    while True:
        attempt += 1
        log = workdir / f"attempt{attempt}.log"
        if done < kills:
            finished = set().union(*(f for _, f in snakemake_jobs(workdir))) if attempt > 1 else set()
            remaining = wall * max(1 - len(finished) / total_jobs, 0.05)
            wait = rng.uniform(1.0, max(0.8 * remaining, 2.0))
        else:
            wait = max(deadline - time.monotonic(), 1)
        with open(log, "w") as out:
            if attempt > 1:  # what a user runs after a kill: the killed Snakemake's lock stays behind
                subprocess.run(snakemake_cmd(workdir, configfile, cores) + ["--unlock"], stdout=out,
                               stderr=subprocess.STDOUT, check=True)
            proc = subprocess.Popen(snakemake_cmd(workdir, configfile, cores), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: the kill reaches every job
            targeted = between_seeds and attempt == 1
            rc = _wait_watching(proc, max(deadline - time.monotonic(), 1) if targeted else wait, workdir, seen,
                                seeds if targeted else None)
            if rc is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                for path in _mid_job(seen, seeds):
                    seen[path][1] = True
                if done >= kills:
                    raise SystemExit(f"the run did not finish within {timeout:.0f} s; see {log}")
                done += 1
                continue
        if rc:
            raise SystemExit(f"attempt {attempt} failed with exit status {rc}; see {log}")
        return done


def snakemake_jobs(workdir: Path) -> list[tuple[set, set]]:
    """Per Snakemake invocation, in order: (jobs started, jobs finished), each job named by its rule and
    outputs (the same in every invocation, where job ids are not)."""
    runs = []
    for log in sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log")):
        started, finished, names, current = set(), set(), {}, None
        for line in log.read_text(errors="replace").splitlines():
            rule = re.match(r"(?:local)?rule (\w+):$", line)
            if rule:
                current = {"rule": rule.group(1), "output": ""}
            elif current is not None and line.startswith("    output: "):
                current["output"] = line[len("    output: "):]
            elif current is not None and line.startswith("    jobid: "):
                job = int(line.split(":")[1])
                names[job] = (current["rule"], current["output"])
                started.add(names[job])
                current = None
            else:
                done = re.search(r"Finished jobid: (\d+)|Finished job (\d+)\.", line)
                if done and int(done.group(1) or done.group(2)) in names:
                    finished.add(names[int(done.group(1) or done.group(2))])
        runs.append((started, finished))
    return runs


def reruns_of_completed(runs: list[tuple[set, set]]) -> list:
    """Jobs started in an invocation after an earlier one had logged them finished."""
    completed, reruns = set(), []
    for started, finished in runs:
        reruns += sorted(started & completed)
        completed |= finished
    return reruns


def files_under(workdir: Path) -> set[str]:
    return {str(p.relative_to(workdir)) for top in ("results", "resources") for p in (workdir / top).rglob("*")}


def summary_differences(reference: Path, chaos: Path) -> list[str]:
    """Columns (other than timings) where the two summaries differ, with the first differing row."""
    a, b = (pd.read_csv(p).sort_values(["dataset", "method", "seed"]).reset_index(drop=True)
            for p in (reference, chaos))
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return [f"shape: {a.shape} {list(a.columns)} against {b.shape} {list(b.columns)}"]
    out = []
    for col in a.columns:
        if TIMING.search(col) or col in RESUMED:
            continue
        x, y = a[col], b[col]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            same = np.isclose(x, y, rtol=MEMORY_RTOL if MEMORY.search(col) else 1e-9, atol=0, equal_nan=True)
        else:
            same = ((x == y) | (x.isna() & y.isna())).to_numpy()
        if not same.all():
            i = int(np.argmin(same))
            out.append(f"{col}: {a.loc[i, ['dataset', 'method', 'seed']].tolist()} {x[i]!r} against {y[i]!r}")
    return out


def chaos(workdir: Path, kills: int = 5, seed: int = 0, cores: int = 2, config: dict | None = None,
          timeout: float = 3600) -> dict:
    """The whole experiment under ``workdir`` (``reference/`` and ``chaos/``); returns what it found."""
    config = config or chaos_config()
    found = {}
    for name in ("reference", "chaos"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
        (workdir / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ref = workdir / "reference"
    wall = run_through(ref, ref / "config.yaml", cores, ref / "run.log", timeout)
    found["uninterrupted_jobs"] = sum(len(started) for started, _ in snakemake_jobs(ref))
    seen = {}
    found["kills"] = kill_and_restart(workdir / "chaos", workdir / "chaos" / "config.yaml", cores, kills, wall,
                                      found["uninterrupted_jobs"], np.random.default_rng(seed), timeout, seen,
                                      between_seeds=config.get("seeds_per_job", 1) > 1)
    found["seeds_retrained"] = seeds_retrained(workdir / "chaos", seen)
    found["seeds_seen"] = len(seen)
    found["seeds_finished_before_a_kill"] = sum(killed for _, killed in seen.values())  # with seeds left in the job
    runs = snakemake_jobs(workdir / "chaos")
    found["reruns"] = reruns_of_completed(runs)
    found["jobs_started"] = sum(len(started) for started, _ in runs)
    # The detector, checked on these real logs: read after the uninterrupted run's, every job the chaos run
    # started is a job that had completed, and must be found as one.
    found["detector_sees_reruns"] = (set(reruns_of_completed(snakemake_jobs(ref) + runs))
                                     == set().union(*(started for started, _ in runs)))
    found["differences"] = summary_differences(ref / "results" / "summary.csv",
                                               workdir / "chaos" / "results" / "summary.csv")
    found["leftovers"] = sorted(files_under(workdir / "chaos") - files_under(ref))
    found["uninterrupted_s"] = wall
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="kills that land on a live run (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--methods", nargs="+", default=["lora", "full_ft"])
    parser.add_argument("--datasets", nargs="+", default=["sst2", "imdb"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--seeds-per-job", type=int, default=1,
                        help="seeds trained in one process (config seeds_per_job); >1: no finished seed may retrain")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep both runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    config = chaos_config(args.methods, args.datasets, args.seeds, seeds_per_job=args.seeds_per_job)
    with tempfile.TemporaryDirectory() as tmp:
        found = chaos(args.workdir or Path(tmp), args.kills, args.seed, args.cores, config)
    for rerun in found["reruns"]:
        print(f"completed job ran again: {rerun}")
    for diff in found["differences"]:
        print(f"summary differs: {diff}")
    for path in found["leftovers"]:
        print(f"left over: {path}")
    for path in found["seeds_retrained"]:
        print(f"finished seed trained again: {path}")
    equal = "no" if found["differences"] else "yes"
    print(f"uninterrupted run: {found['uninterrupted_s']:.0f} s")
    print(f"kills={found['kills']} reruns_of_completed={len(found['reruns'])} summary_equal={equal} "
          f"leftovers={len(found['leftovers'])} jobs_started={found['jobs_started']} "
          f"uninterrupted_jobs={found['uninterrupted_jobs']} seeds_retrained={len(found['seeds_retrained'])} "
          f"seeds_seen={found['seeds_seen']} seeds_finished_before_a_kill={found['seeds_finished_before_a_kill']}")
    if not found["detector_sees_reruns"]:
        print("the rerun detector missed jobs in these logs: reruns_of_completed cannot be trusted")
    failed = found["reruns"] or found["differences"] or found["leftovers"] or not found["detector_sees_reruns"]
    failed = failed or (args.seeds_per_job > 1 and found["seeds_retrained"])
    return 1 if failed or found["kills"] < args.kills else 0


if __name__ == "__main__":
    sys.exit(main())
