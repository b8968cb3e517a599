"""How the HTML report scales: 1,000 cases against 10,000, in one command.

Both results directories are made here from one real kernel-judged case
(Adam, float32, 3x2 parameters, 5 steps) copied under many cell ids, 20
cases per cell, each cell's first case carrying its case and values (as a
run's worst case does). For each, the time to write the report (evidence
and reproducer per cell included) and the time Chromium takes to load it
until the matrix is there are printed, then the ratio 10,000 / 1,000; the
figure that matters is the ratio (ideally near 10 for writing, whose work
is per cell, and well under 10 for loading, whose per-cell data is parsed
only when a cell is opened). Needs Playwright and Debian's chromium.

    python benchmarks/report_load.py [--small 1000] [--large 10000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from conformance.case import Case
from conformance.catalog import load_catalog
from conformance.compare import classify
from conformance.kernel import run_case
from conformance.report import write_report
from conformance.summary import summarize
from conformance.cells import Cell
from conformance.records import Record
from conformance.tolerance import Trajectory


def results(directory: Path, cases: int) -> None:
    catalog = load_catalog()
    spec = catalog.get("adam")
    rng = np.random.default_rng(0)
    hp = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "maximize": False}
    case = Case.from_dict({"rule": "adam", "framework": "torch", "mode": "forloop", "device": "cpu", "dtype": "float32",
                           "hyperparameters": hp, "params": rng.standard_normal((3, 2)).astype(np.float32).tolist(),
                           "grads": rng.standard_normal((5, 3, 2)).astype(np.float32).tolist()})
    observed = Trajectory(run_case(spec, case).params.astype(np.float32).astype(np.float64), {})
    verdict = classify(spec, case, (), observed)
    directory.mkdir(parents=True)
    with open(directory / "results-main.jsonl", "w", encoding="utf-8") as f:
        for n in range(cases // 20):
            cell = Cell("adam", "torch", f"m{n:04d}", "cpu", "float32")
            for k in range(20):
                record = Record(cell=cell, outcome=verdict.outcome, reason=verdict.explanation, verdict=verdict, case=case, observed=observed)
                line = record.to_json(with_case=k == 0)
                line["mode"] = "forloop"  # (the spec's mode, so that the evidence and reproducer are made)
                f.write(json.dumps(line) + "\n")


def load_seconds(path: Path) -> float:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page()
        t0 = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("#matrix td.cell")
        seconds = time.perf_counter() - t0
        browser.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.large):
            d = Path(tmp) / str(n)
            results(d, n)
            t0 = time.perf_counter()
            write_report(d, summarize([d]))
            written = time.perf_counter() - t0
            loaded = load_seconds(d / "index.html")
            size = (d / "index.html").stat().st_size / 1e6
            figures[n] = (written, loaded)
            print(f"{n:>6} cases, {n // 20} cells: report written in {written:.2f} s ({size:.1f} MB), loaded in Chromium in {loaded:.2f} s")
    (ws, ls), (wl, ll) = figures[args.small], figures[args.large]
    print(f"ratio {args.large}/{args.small}: writing {wl / ws:.1f}x, loading {ll / ls:.1f}x (cases: {args.large / args.small:.0f}x)")


if __name__ == "__main__":
    main()
