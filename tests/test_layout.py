"""The package's shape: areas import one way, never in a cycle, and the analysis runs without torch.

Areas, lowest first: ``io``, ``config``, ``runtime``, ``loading``, ``methods``, ``execution``. A module may
import its own area and the areas below it, never one above (not even lazily inside a function). ``analysis``
stands apart: it uses ``io``, ``config`` and itself only; ``execution`` may use its pure metric and statistics
functions. The workflow scripts and the benchmarks sit on top of everything.
"""

import ast
import re
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "lorabench"
ORDER = ["io", "config", "runtime", "loading", "methods", "execution"]
#: The areas each area may import (besides itself).
ALLOWED = {area: set(ORDER[:i]) for i, area in enumerate(ORDER)}
ALLOWED["analysis"] = {"io", "config"}
ALLOWED["execution"] |= {"analysis"}


def _module_name(path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path) -> set[str]:
    """Every lorabench module a file imports, lazily or not (``from lorabench import x`` counts as lorabench.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lorabench"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lorabench")}
    return found


def _area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_lives_in_an_area():
    stray = [m for m in MODULES if m != "lorabench" and _area(m) not in ALLOWED]
    assert not stray, f"modules outside the areas {sorted(ALLOWED)}: {stray}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_areas(module):
    area = _area(module)
    if area is None:
        return
    for imported in _imports(MODULES[module]):
        target = _area(imported)
        if target is None or target == area or imported not in MODULES:
            continue
        assert target in ALLOWED[area], (
            f"{module} imports {imported}: area '{area}' may import only {sorted(ALLOWED[area]) or 'nothing'}")


def test_package_imports_have_no_cycles():
    graph = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_layout_test_catches_an_upward_import(tmp_path):
    """The check above is not vacuous: an upward import is found (a config module reaching into methods)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lorabench.methods import METHODS\n")
    assert {_area(m) for m in _imports(bad)} == {"methods"}
    assert "methods" not in ALLOWED["config"]


def _script_imports(name: str) -> list[str]:
    """The modules a workflow script imports (it runs under Snakemake, so it is not run here)."""
    tree = ast.parse((REPO / "workflow" / "scripts" / f"{name}.py").read_text())
    return sorted({n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module})


# The analysis package, each of its modules, and what the CPU-only jobs import, each in a fresh interpreter.
TORCH_FREE = {"lorabench.analysis": ["lorabench.analysis"],
              **{f"lorabench.analysis.{p.stem}": [f"lorabench.analysis.{p.stem}"]
                 for p in sorted((PACKAGE / "analysis").glob("*.py")) if p.stem != "__init__"},
              "lorabench.config": ["lorabench.config", "lorabench.io"],
              **{f"scripts/{s}.py": _script_imports(s) for s in ("aggregate", "report", "plot", "lr_choice")},
              # the torch jobs' own processes: the warm process (execution/warm.py) imports torch for them
              **{f"scripts/{s}.py": _script_imports(s)
                 for s in ("train", "train_seeds", "efficiency", "predictor", "tokenize", "fetch_model",
                           "fetch_dataset")}}


@pytest.mark.parametrize("what", sorted(TORCH_FREE))
def test_analysis_and_its_jobs_import_no_torch(what):
    modules = TORCH_FREE[what]
    assert modules
    code = "".join(f"import {m}\n" for m in modules)
    code += "import sys\nassert 'torch' not in sys.modules, 'torch imported'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_snakefile_builds_its_graph_without_transformers_models_or_plotnine():
    """Every Snakemake invocation pays what common.smk imports, and on a cluster each job pays it again inside
    its own Snakemake: neither transformers' modelling code nor plotnine is among it
    (docs/measurements/default-run.md, "Snakemake's own start-up")."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    modules = sorted(set(re.findall(r"^\s*from (lorabench[\w.]*) import", text, flags=re.M)))
    assert "lorabench.methods" in modules and "lorabench.analysis.figures" in modules
    code = "".join(f"import {m}\n" for m in modules)
    code += ("import sys\nheavy = [m for m in ('transformers.modeling_utils', 'plotnine') if m in sys.modules]\n"
             "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
