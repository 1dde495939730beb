"""Open a run's results/explorer.html in headless Chromium, network off, pick a dataset and two metrics with the
page's own menus, and save a screenshot: the pictures in docs/ come from this.

    .venv/bin/python benchmarks/explorer_screenshot.py results/explorer.html docs/explorer.png \
        --dataset imdb --x peak_train_mem_mb --y accuracy

Needs Debian's chromium (apt-get install chromium) and playwright (the test extra). Prints the points the plot
holds and which of them the frontier marks, so the picture can be checked against summary_by_method.csv.
Exits 1 on a console error or a network request: the page must work from disk alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorabench.analysis.explorer import METRICS

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--dataset", help="default: the page's first dataset")
    ap.add_argument("--x", help="a metric key of lorabench.analysis.explorer.METRICS")
    ap.add_argument("--y", help="a metric key of lorabench.analysis.explorer.METRICS")
    ap.add_argument("--width", type=int, default=1300)
    args = ap.parse_args()
    label = {key: text for key, text, _ in METRICS}
    for key in (args.x, args.y):
        if key is not None and key not in label:
            ap.error(f"unknown metric {key!r}; choose one of {', '.join(label)}")
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} not found: apt-get install chromium")

    from playwright.sync_api import sync_playwright

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_context(offline=True, viewport={"width": args.width, "height": 1100}).new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else problems.append(
            f"network request: {r.url}"))
        page.goto(args.html.resolve().as_uri())
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=30_000)
        selects = page.locator("select")  # dataset, x, y: the menus a person uses
        if args.dataset:
            selects.nth(0).select_option(args.dataset)
        if args.x:
            selects.nth(1).select_option(label=label[args.x])
        if args.y:
            selects.nth(2).select_option(label=label[args.y])
        page.wait_for_timeout(500)
        view = page.evaluate("() => { const d = Bokeh.documents[0].get_model_by_name('view').data;"
                             " return {method: d.method, x: d.x, y: d.y, frontier: d.frontier}; }")
        args.png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.png), full_page=True)
        browser.close()
    for m, x, y, f in zip(view["method"], view["x"], view["y"], view["frontier"]):
        print(f"{m:24s} x={x:<14.6g} y={y:<10.4g} frontier={f}")
    for line in problems:
        print("problem:", line)
    print(f"screenshot={args.png} points={len(view['method'])} problems={len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
