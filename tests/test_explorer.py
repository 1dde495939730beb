"""results/explorer.html: its data against hand-built summaries, and the smoke run's page in a real browser
(Debian's Chromium, headless, network off)."""

import os
import shutil
import subprocess

import pandas as pd
import pytest

from lorabench.analysis.comparisons import summary_by_method
from lorabench.analysis.explorer import METRICS, explorer_rows
from lorabench.methods import type_traits

from conftest import REPO, smoke_config

CHROMIUM = "/usr/bin/chromium"


def _summary():
    rows = []
    for method, kind, accs, mem in (("lora", "lora", [0.80, 0.82], 100.0), ("qlora", "qlora", [0.78, 0.80], 60.0),
                                    ("full_ft", "full_ft", [0.85, 0.86], 300.0), ("base", "base", [0.5, 0.5], None)):
        for seed, acc in enumerate(accs):
            rows.append({"dataset": "sst2", "task": "classification", "method": method, "method_type": kind,
                         "seed": seed, "accuracy": acc, "peak_train_mem_mb": mem if mem is None else mem + seed})
    return pd.DataFrame(rows)


def test_rows_hold_each_trained_method_once_with_its_interval_and_the_base_as_a_level():
    summary = _summary()
    sig = pd.DataFrame([{"dataset": "sst2", "method": "qlora", "metric": "accuracy", "diff": -0.02,
                         "p_paired_t_holm": 0.5, "p_mcnemar_exact_holm": 0.25}])
    rows, levels = explorer_rows(summary, sig, "lora", type_traits(["lora", "qlora", "full_ft", "base"]),
                                 {"qlora": {"type": "qlora", "r": 8, "lr": 1e-3, "lr_reason": "why"}})
    assert sorted(r["method"] for r in rows) == ["full_ft", "lora", "qlora"]  # the base is a level, not a point
    assert levels == {"sst2": {"accuracy": 0.5}}
    q = next(r for r in rows if r["method"] == "qlora")
    assert q["accuracy"] == pytest.approx(0.79) and q["accuracy_lo"] < 0.79 < q["accuracy_hi"]
    assert q["peak_train_mem_mb"] == pytest.approx(60.5) and q["seeds"] == "0, 1"
    assert q["settings"] == '{"lr": 0.001, "r": 8}' and "McNemar p = 0.25" in q["verdict"]
    assert q["colour"] == type_traits(["qlora"])["qlora"]["colour"]
    assert next(r for r in rows if r["method"] == "lora")["verdict"] == "the baseline"


def _undominated(points: pd.DataFrame, x: str, y: str) -> set:
    """The hand computation: methods no other method matches or beats on both metrics, better on one."""
    higher = {m: h for m, _, h in METRICS}

    def at_least(a, b, m):
        return a >= b if higher[m] else a <= b

    out = set()
    for i, p in points.iterrows():
        beaten = any(at_least(q[x], p[x], x) and at_least(q[y], p[y], y) and (q[x] != p[x] or q[y] != p[y])
                     for j, q in points.iterrows() if j != i)
        if not beaten:
            out.add(p["method"])
    return out


def _external_resources(text: str) -> list[str]:
    """The src/href of the page's own script, link and img tags (script bodies are not parsed as tags)."""
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if tag in ("script", "link", "img") and k in ("src", "href") and v)

    Tags().feed(text)
    return found


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=900,
                       stdout=subprocess.DEVNULL)
    assert os.path.exists(CHROMIUM), "Debian's chromium is needed (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.e2e
def test_the_explorer_works_offline_in_a_browser(smoke_run, browser):
    res = smoke_run / "results"
    html = res / "explorer.html"
    assert html.stat().st_size < 10 * 2**20
    assert not _external_resources(html.read_text())  # every script and style is inline
    context = browser.new_context(offline=True, viewport={"width": 1300, "height": 1100})
    page = context.new_page()
    problems, requests = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
    page.goto(html.as_uri())
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=30_000)
    page.wait_for_timeout(500)

    def model(name, attr):
        return page.evaluate(f"() => Bokeh.documents[0].get_model_by_name('{name}').{attr}")

    by_method = summary_by_method(pd.read_csv(res / "summary.csv"))
    trained = by_method[by_method["method_type"] != "base"]

    def check(dataset, x, y):
        expected = trained[trained["dataset"] == dataset].dropna(subset=[f"{x}_mean", f"{y}_mean"])
        shown = dict(zip(model("view", "data.method"), model("view", "data.y")))
        assert sorted(shown) == sorted(expected["method"]), dataset  # one point per method of the dataset
        for r in expected.itertuples():
            assert shown[r.method] == pytest.approx(getattr(r, f"{y}_mean")), (dataset, r.method)
        front = {m for m, f in zip(model("view", "data.method"), model("view", "data.frontier")) if f == "yes"}
        points = expected.rename(columns={f"{x}_mean": x, f"{y}_mean": y})[["method", x, y]]
        assert front == _undominated(points, x, y), (dataset, x, y)
        assert sorted(model("front", "data.x")) == sorted(points.set_index("method").loc[sorted(front), x])

    selects = page.locator("select")  # dataset, x, y: the page's own menus, used as a person would
    datasets = sorted(smoke_config()["datasets"])
    assert model("dataset", "value") == datasets[0]
    check(datasets[0], "peak_train_mem_mb", "accuracy")
    page.screenshot(path=str(res / "explorer.png"), full_page=True)
    label = {m: text for m, text, _ in METRICS}  # the menus show each metric's label
    selects.nth(2).select_option(label=label["macro_f1"])  # a metric redraws the points and the frontier
    check(datasets[0], "peak_train_mem_mb", "macro_f1")
    selects.nth(1).select_option(label=label["throughput_per_s"])  # higher is better on x now
    check(datasets[0], "throughput_per_s", "macro_f1")
    selects.nth(0).select_option("wikitext2")  # a language-modelling dataset: y becomes its perplexity
    assert model("y", "value") == "perplexity"
    check("wikitext2", "throughput_per_s", "perplexity")
    base = pd.read_csv(res / "summary.csv").query("dataset == 'wikitext2' and method_type == 'base'")["perplexity"]
    assert model("base", "visible") and model("base", "location") == pytest.approx(base.mean())
    assert page.locator(".slick-row").count() == len(trained[trained["dataset"] == "wikitext2"])  # the table
    assert not problems, problems
    assert not requests, requests  # nothing asked of the network
    (REPO / "results").mkdir(exist_ok=True)
    shutil.copy(res / "explorer.png", REPO / "results" / "explorer-smoke.png")  # for people to look at
    context.close()
