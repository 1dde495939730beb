"""The default workload's wall time on this tree against an earlier commit's, back to back on one machine.

    .venv/bin/python benchmarks/against_commit.py [--base 96245c6] [--datasets sst2 imdb] [--workdir DIR]

Each tree runs its own config.yaml through Snakemake from an empty folder, one after the other (the base
first), with the datasets of ``--datasets`` (default: every dataset of the base's config). This tree's run has
the held-out curves off ("Pay each fixed cost once": the workload of the base, which had no curves; the curves
are a measurement with their own budget). Every other difference between the two configs is printed before
the runs, so a reader sees whether the two trees ran the same workload: keys only this tree has are its
features (``seeds_per_job``, for example), and are kept.

The base tree is extracted with ``git archive`` into ``<workdir>/tree-<commit>`` and imported through
PYTHONPATH; both arms run on this interpreter, so on the same libraries. The last line is

    base=COMMIT base_s=S head_s=S ratio=R datasets=D

Measure on an otherwise idle machine: a run of the whole default workload takes about 80 min per arm on the
project's 2-core machines (docs/measurements/default-run.md).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from chaos import SNAPSHOTS, run_through  # this folder is on sys.path: a benchmark runs as a script

REPO = Path(__file__).resolve().parents[1]
CURVE_KEYS = ("holdout_size", "curve_points", "target")


def base_tree(commit: str, workdir: Path) -> Path:
    """The files of ``commit``, extracted once under ``workdir``."""
    tree = workdir / f"tree-{commit}"
    if not (tree / "Snakefile").exists():
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
        tree.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
    return tree


def workload(config: dict, datasets: list[str] | None, curves: bool = True) -> dict:
    """``config`` cut to ``datasets`` (None: all of them), the snapshots here; without ``curves``, no dataset
    keeps a held-out slice, curve points or a target, and ``evaluation.curve_points`` is 0."""
    cfg = {**config, "snapshots": str(SNAPSHOTS)}
    chosen = datasets or list(config["datasets"])
    missing = [d for d in chosen if d not in config["datasets"]]
    if missing:
        raise SystemExit(f"--datasets: {missing} not in the config's datasets {list(config['datasets'])}")
    cfg["datasets"] = {d: dict(config["datasets"][d]) for d in chosen}
    methods = {}
    for name, method in config["methods"].items():
        only = method.get("datasets") if isinstance(method, dict) else None
        if only is not None:
            method = {**method, "datasets": [d for d in only if d in chosen]}
            if not method["datasets"]:
                continue
        methods[name] = method
    cfg["methods"] = methods
    if not curves:
        for entry in cfg["datasets"].values():
            for key in CURVE_KEYS:
                entry.pop(key, None)
        cfg["evaluation"] = {**cfg.get("evaluation", {}), "curve_points": 0}
    return cfg


def differences(base: dict, head: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two configs, as 'key: base=... head=...' (nested keys joined by '.')."""
    out = []
    for key in sorted(set(base) | set(head), key=str):
        name = f"{prefix}{key}"
        if key not in head:
            out.append(f"{name}: only in the base ({base[key]!r})")
        elif key not in base:
            out.append(f"{name}: only in this tree ({head[key]!r})")
        elif isinstance(base[key], dict) and isinstance(head[key], dict):
            out += differences(base[key], head[key], f"{name}.")
        elif base[key] != head[key]:
            out.append(f"{name}: base={base[key]!r} head={head[key]!r}")
    return out


def run_arm(tree: Path, config: dict, workdir: Path, cores: int) -> float:
    """One Snakemake run of ``tree`` on ``config`` from an empty ``workdir``; its wall seconds."""
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"{workdir} is not empty: each arm runs from an empty folder; remove it or pick --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    configfile = workdir.parent / f"{workdir.name}.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    paths = [str(tree / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # no empty entry: that would put the cwd first
    return run_through(workdir, configfile, cores, workdir.parent / f"{workdir.name}.log", tree=tree, env=env)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="96245c6", help="the commit to compare with (default: the main of "
                        "'Pay each fixed cost once')")
    parser.add_argument("--datasets", nargs="+", help="run only these datasets (default: all of the base's)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/against_commit"),
                        help="where both trees run, each in a folder of its own (default /tmp/against_commit)")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    tree = base_tree(args.base, workdir)
    base_cfg = workload(yaml.safe_load((tree / "config.yaml").read_text()), args.datasets)
    head_cfg = workload(yaml.safe_load((REPO / "config.yaml").read_text()), args.datasets, curves=False)
    for line in differences(base_cfg, head_cfg):
        print(f"config differs: {line}")
    base_s = run_arm(tree, base_cfg, workdir / "base", args.cores)
    print(f"base {args.base}: {base_s:.0f} s", flush=True)
    head_s = run_arm(REPO, head_cfg, workdir / "head", args.cores)
    print(f"head: {head_s:.0f} s")
    print(f"base={args.base} base_s={base_s:.0f} head_s={head_s:.0f} ratio={head_s / base_s:.3f} "
          f"datasets={','.join(base_cfg['datasets'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
