"""Where did a finished run's wall time go?   .venv/bin/python benchmarks/pipeline_efficiency.py RESULTS_DIR

Reads a finished run (the ``results/`` folder of one ``snakemake`` invocation from a clean state) and prints
a table: training loops, the held-out curve's evaluations, evaluation, efficiency timing (latency,
throughput, size), FLOPs counting, start-up and load (interpreter, imports, building the model), and
everything else (saving, fetching, tokenizing, aggregation, figures, Snakemake's own scheduling). The last
line is

    train_share=X train_share_excl_curves=Y curve_share=C jobs=N processes=P startup_load_s_per_process=L wall_s=S

with train_share = summed training-loop time / the run's wall time; train_share_excl_curves = the same with
the held-out curve's evaluations taken out of the wall time (they have their own budget); curve_share = the
held-out curve's evaluation time / the training loops' time (its budget: 10%); jobs = Snakemake jobs (one
``benchmark:`` file each); processes = the Python processes the run started (every rule runs a ``script:``,
so one per job, plus Snakemake's own and, with ``warm_process``, the warm process that forks the torch jobs:
lorabench/execution/warm.py); startup_load_s_per_process = the mean start-up (interpreter, imports)
plus load (model and data) of the torch jobs' processes, which record it (a process that trains several
seeds, ``seeds_per_job``, loads once per seed and starts once); wall_s = from the first job's start to the
last job's end (each ``results/benchmarks/**.tsv`` is written when its job ends and holds the job's seconds).
A table before it gives the start-up and load per kind of torch job, and one before that splits "everything
else" into its parts: saving and set-up inside the torch jobs (the adapter's save, its statistics, the metrics'
writing, the optimizer's set-up), the torch jobs' seconds outside their phases (Snakemake's job start and
end, the seeds' forks), the jobs that record no phases (fetching, tokenizing, predictors, aggregation,
figures, the report), the time between jobs when none ran (Snakemake's scheduling), less the time jobs ran
in parallel.

The phases come from ``job_phases_s`` in each run's train_metrics.json and each efficiency JSON. Results
of older layouts (separate evaluate and flops jobs, no phases) are read too: their training loops and
evaluation forwards from the metrics, whole flops jobs as FLOPs, the rest as "everything else".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

CATEGORIES = ["training loops", "held-out curve", "evaluation", "efficiency timing", "FLOPs", "start-up and load",
              "tracking", "everything else"]


def job_times(results: Path) -> pd.DataFrame:
    """One row per Snakemake job: rule, seconds, end time (the benchmark file's mtime)."""
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        table = pd.read_csv(tsv, sep="\t")
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        rows.append({"rule": rule, "s": float(table["s"].iloc[0]), "end": tsv.stat().st_mtime})
    if not rows:
        raise SystemExit(f"{results}: no benchmarks/**/*.tsv; give the results folder of a finished run")
    return pd.DataFrame(rows)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def phase_seconds(results: Path, jobs: pd.DataFrame, startup: list | None = None) -> dict[str, float]:
    """Summed seconds per category over every torch job (everything else is filled in by the caller); each
    torch job's (kind, start-up s, load s, process, warm, its phases' total s, its saving and set-up s) appended
    to ``startup``."""
    startup = [] if startup is None else startup
    total = dict.fromkeys(CATEGORIES[:-1], 0.0)
    for train_json in (results / "runs").rglob("train_metrics.json"):
        m = _json(train_json)
        phases = m.get("job_phases_s")
        total["training loops"] += m["train_time_s"]  # the loop itself: optimizer set-up is 'everything else'
        if phases:
            total["evaluation"] += phases["evaluation"]
            total["held-out curve"] += phases.get("curve", 0.0)
            total["start-up and load"] += phases["startup"] + phases["load"]
            # seeds_per_job: a process's seeds each record their load; the first also the process's start-up
            process = (phases["process_id"], phases["process_started_unix_s"]) if "process_id" in phases else train_json
            # saving and set-up: the loop phase holds the optimizer's set-up besides the timed loop (the curve was
            # moved out of it)
            inside = phases.get("save", 0.0) + phases["train_loop"] - m["train_time_s"]
            startup.append(("train", phases["startup"], phases["load"], process, phases.get("warm_process", False),
                            phases["total"], inside))
            total["tracking"] += phases.get("tracking", 0.0)  # with `tracking:` on: opening, final metrics
        else:  # older layout: the evaluation forward was timed by a separate evaluate job
            eval_json = train_json.parent / "eval_metrics.json"
            if eval_json.exists():
                total["evaluation"] += _json(eval_json).get("eval_time_s", 0.0)
    for eff_json in (results / "efficiency").rglob("*.json"):
        phases = _json(eff_json)["job_phases_s"]
        total["efficiency timing"] += phases["efficiency_timing"]
        total["FLOPs"] += phases["flops"]
        total["start-up and load"] += phases["startup"] + phases["load"]
        startup.append(("efficiency", phases["startup"], phases["load"], eff_json, phases.get("warm_process", False),
                        phases["total"], 0.0))
    total["FLOPs"] += jobs.loc[jobs["rule"] == "flops", "s"].sum()  # older layout: whole flops jobs
    return total


def everything_else_parts(records: pd.DataFrame, jobs: pd.DataFrame, wall: float) -> dict[str, float]:
    """The parts of "everything else" (the module's docstring), from the torch jobs' ``records`` (phase_seconds);
    they sum to it where every torch job records its phases (an older layout's evaluate jobs are counted in both
    evaluation and the jobs without phases)."""
    torch_rules = jobs["rule"].isin(["train", "efficiency"])
    no_phases = ~torch_rules & (jobs["rule"] != "flops")  # an older layout's flops jobs are counted as FLOPs
    intervals = sorted(zip(jobs["end"] - jobs["s"], jobs["end"]))
    busy, reach = 0.0, intervals[0][0]
    for start, end in intervals:  # the union of the jobs' intervals
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return {"saving and set-up in torch jobs": float(records["inside_s"].sum()),
            "torch jobs outside their phases": float(jobs.loc[torch_rules, "s"].sum() - records["total_s"].sum()),
            "jobs without phases": float(jobs.loc[no_phases, "s"].sum()),
            "between jobs": wall - busy,
            "jobs in parallel": busy - float(jobs["s"].sum())}


def breakdown(results: Path) -> tuple[pd.DataFrame, dict]:
    jobs = job_times(results)
    wall = float((jobs["end"]).max() - (jobs["end"] - jobs["s"]).min())
    startup = []
    seconds = phase_seconds(results, jobs, startup)
    seconds["everything else"] = wall - sum(seconds.values())
    table = pd.DataFrame({"where": CATEGORIES, "seconds": [seconds[c] for c in CATEGORIES]})
    table["share_of_wall"] = table["seconds"] / wall
    by_rule = jobs.groupby("rule")["s"].agg(["count", "sum", "mean"]).sort_values("sum", ascending=False)
    loops = seconds["training loops"]
    records = pd.DataFrame(startup, columns=["job", "startup_s", "load_s", "process", "warm", "total_s", "inside_s"])
    parts = everything_else_parts(records, jobs, wall)
    per_process = (records.astype({"process": str}).groupby(["job", "process"], as_index=False)
                   .agg(startup_s=("startup_s", "sum"), load_s=("load_s", "sum"), warm=("warm", "any")))
    by_kind = per_process.groupby("job").agg(processes=("startup_s", "size"), startup_s_mean=("startup_s", "mean"),
                                             load_s_mean=("load_s", "mean"))
    totals = {"train_share": loops / wall, "curve_share": seconds["held-out curve"] / loops if loops else 0.0,
              "train_share_excl_curves": loops / (wall - seconds["held-out curve"]),
              "processes": len(jobs) + 1 + bool(per_process["warm"].any()),  # + the warm process, if any
              "warm_jobs": int(per_process["warm"].sum()), "torch_jobs": len(per_process),
              "startup_load_s_per_process": float((per_process["startup_s"] + per_process["load_s"]).mean())
              if len(per_process) else float("nan"),
              "startup_by_kind": by_kind, "jobs": len(jobs), "wall_s": wall,
              "job_seconds": float(jobs["s"].sum()), "by_rule": by_rule, "else_parts": parts}
    return table, totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results folder of a finished run (e.g. results)")
    args = parser.parse_args(argv)
    table, totals = breakdown(args.results)
    print(f"{args.results}: {totals['jobs']} jobs, wall {totals['wall_s']:.0f} s, "
          f"summed job time {totals['job_seconds']:.0f} s")
    print(table.to_string(index=False, formatters={"seconds": "{:.0f}".format, "share_of_wall": "{:.1%}".format}))
    print("\neverything else, in parts (seconds; 'jobs in parallel' is time counted twice):")
    for part, seconds in totals["else_parts"].items():
        print(f"  {part:34s} {seconds:8.0f}")
    print("\njobs by rule (Snakemake benchmark seconds):")
    print(totals["by_rule"].to_string(float_format="{:.1f}".format))
    print(f"\nPython processes: {totals['processes']} (one per job, every rule runs a script, plus Snakemake's own "
          "and the warm process's, where one ran); start-up and load of the torch jobs (seconds, mean per process):")
    print(totals["startup_by_kind"].to_string(float_format="{:.1f}".format))
    print(f"torch jobs forked from the warm process (warm_process): {totals['warm_jobs']} of {totals['torch_jobs']}")
    if (table["seconds"] < 0).any():
        print("note: 'everything else' is negative: jobs ran in parallel, so summed phases exceed the wall time")
    print(f"train_share={totals['train_share']:.3f} train_share_excl_curves={totals['train_share_excl_curves']:.3f} "
          f"curve_share={totals['curve_share']:.3f} jobs={totals['jobs']} processes={totals['processes']} "
          f"startup_load_s_per_process={totals['startup_load_s_per_process']:.1f} wall_s={totals['wall_s']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
