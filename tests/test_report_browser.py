"""The HTML report, opened in headless Chromium (Debian's `chromium` package,
driven by Playwright): the matrix renders, a drill-down opens with its plots,
reproducer and case, the filters work, nothing is fetched from the network,
nothing reaches the console, and text from results stays text.

The report comes from a real (small) conformance run on torch, plus a
results directory of 10,000 cases for the page's responsiveness. Without
Chromium or Playwright the tests skip with the reason, except under CI
(`CI` set), where a missing browser is a failure of the set-up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.report import write_report
from conformance.summary import summarize

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = '</script><script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'


def _need_browser() -> None:
    missing = None
    if importlib.util.find_spec("playwright") is None:
        missing = "playwright is not installed (pip install -e '.[test]')"
    elif CHROMIUM is None:
        missing = "no chromium on PATH (Debian: apt-get install chromium)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the report test's browser: {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real run: Adam on torch's forloop and fused modes, float32, a few cases."""
    out = tmp_path_factory.mktemp("run") / "results"
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    cmd = [sys.executable, "-m", "conformance", "run", "--rules", "adam,sgd", "--frameworks", "torch", "--modes", "forloop,fused,sparse_adam",
           "--dtypes", "float32", "--devices", "cpu", "--examples", "3", "--seed", "1", "--out", str(out), "--no-progress", "--jobs", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]
    # a record whose text would be markup if it were not escaped
    lines = (out / "results-main.jsonl").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if '"observed"' in line:
            record = json.loads(line)
            record["reason"] = HOSTILE
            lines[n] = json.dumps(record)
    (out / "results-main.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_report(out, summarize([out]))
    return out


class Page:
    """A Chromium page that records console messages, page errors, requests and dialogs."""

    def __init__(self, browser, url: str):
        self.messages: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.on("console", lambda m: self.messages.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        t0 = time.perf_counter()
        self.page.goto(url)
        self.page.wait_for_selector("#matrix td.cell")
        self.load_seconds = time.perf_counter() - t0

    def offline(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file:", "data:", "blob:"))]


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_matrix_renders_and_a_drill_down_opens(browser, run_dir):
    page = Page(browser, (run_dir / "index.html").as_uri())
    p = page.page
    cells = p.locator("#matrix td.cell")
    assert cells.count() >= 4
    rules = p.locator("#matrix tbody th.rule").all_inner_texts()
    assert rules == ["adam", "sgd"]
    # a conforming cell of a plain mode: plots, a reproducer and the case
    cell = p.locator('#matrix td.cell[data-outcome="conforms"]').first
    cell.click()
    p.wait_for_selector("#drill h2")
    title = p.locator("#drill h2").inner_text()
    assert title.startswith(("adam[torch-", "sgd[torch-"))
    p.wait_for_selector("#drill .plot svg.main-svg")
    assert p.locator("#drill .plot").count() == 3  # error, error in ulps, trajectory
    assert "Standalone reproducer" in p.locator("#drill").inner_text()
    script = p.locator("#drill details.script pre").first.text_content()
    assert "import torch" in script and "compare(" in script
    # the page's address names the open cell by its id
    assert p.evaluate("decodeURIComponent(location.hash.slice(1))") == title.split(" ")[0]
    assert not page.messages, page.messages
    assert not page.offline(), page.offline()


def test_every_cell_has_an_address_and_the_page_opens_on_the_answer(browser, run_dir):
    """index.html#<cell id> (what the terminal and pytest print) opens that
    cell's drill-down on load; the first section is the rule x framework
    answer, whose mode links open a cell too."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    cell = next(c["id"] for c in summary["cells"] if c["id"].startswith("adam[torch-fused-cpu-float32") and not c["skipped"])
    page = Page(browser, (run_dir / "index.html").as_uri() + "#" + cell)
    p = page.page
    p.wait_for_selector("#drill h2")
    assert p.locator("#drill h2").inner_text().split(" ")[0] == cell
    first = p.locator("main > section").first
    assert first.get_attribute("id") == "answer"
    answer = first.inner_text()
    assert "torch" in answer and "canonical" in answer and "sparse_adam" in answer
    first.locator('a[href="#sgd[torch-forloop-cpu-float32]"]').click()
    p.wait_for_function("document.querySelector('#drill h2').textContent.startsWith('sgd[torch-forloop-cpu-float32]')")
    assert not page.messages, page.messages
    # the old numeric address still opens its cell
    page = Page(browser, (run_dir / "index.html").as_uri() + "#cell-0")
    page.page.wait_for_selector("#drill h2")
    assert page.page.locator("#drill h2").inner_text().split(" ")[0] == summary["cells"][0]["id"]
    assert not page.messages, page.messages
    assert not page.offline(), page.offline()


def test_filters_hide_columns(browser, run_dir):
    page = Page(browser, (run_dir / "index.html").as_uri())
    p = page.page
    shown = p.locator("#matrix thead th[data-col]:not(.hidden)").count()
    p.locator('fieldset[data-filter="outcome"] input[value="conforms"]').uncheck()
    fewer = p.locator("#matrix thead th[data-col]:not(.hidden)").count()
    assert fewer < shown
    assert "columns" in p.locator("#filter-status").inner_text()
    assert not page.messages, page.messages


def test_results_text_stays_text(browser, run_dir):
    html = (run_dir / "index.html").read_text(encoding="utf-8")
    assert HOSTILE not in html and "<img src=x" not in html
    page = Page(browser, (run_dir / "index.html").as_uri())
    p = page.page
    n = p.evaluate("""() => { for (const s of document.querySelectorAll('script[type="application/json"]')) {
        if (s.id.startsWith('cell-') && s.textContent.includes('onerror')) return s.id.slice(5); } return null; }""")
    assert n is not None
    p.locator(f'#matrix td[data-cell="{n}"]').click()
    p.wait_for_selector("#drill h2")
    assert HOSTILE in p.locator("#drill").inner_text()  # shown literally
    assert p.locator("#drill img").count() == 0
    assert not page.dialogs and not page.messages, (page.dialogs, page.messages)


def test_ten_thousand_cases_stay_responsive(browser, run_dir, tmp_path):
    """10,000 cases over 500 cells (copies of the real run's records under
    other cell ids): the page loads, filters and opens a drill-down. The
    load time is printed, not asserted (benchmarks/report_load.py compares)."""
    records = [json.loads(line) for line in (run_dir / "results-main.jsonl").read_text(encoding="utf-8").splitlines()]
    with_case = [r for r in records if "observed" in r]
    plain = [r for r in records if "case" not in r and "cell_status" not in r]
    assert with_case and plain
    big = tmp_path / "big"
    big.mkdir()
    shutil.copy(next(run_dir.glob("environment-*.json")), big / "environment-main.json")
    with open(big / "results-main.jsonl", "w", encoding="utf-8") as f:
        for n in range(500):
            rule = f"rule{n // 50:02d}"
            for k in range(20):
                r = dict(with_case[k % len(with_case)] if k == 0 else plain[k % len(plain)])
                r.update(rule=rule, cell=f"{rule}[torch-m{n % 50:02d}-cpu-float32]", mode=f"m{n % 50:02d}")
                f.write(json.dumps(r) + "\n")
    summary = summarize([big])
    assert sum(c["examples"] for c in summary["cells"]) == 10_000
    t0 = time.perf_counter()
    write_report(big, summary)
    written = time.perf_counter() - t0
    page = Page(browser, (big / "index.html").as_uri())
    p = page.page
    assert p.locator("#matrix td.cell").count() == 500
    p.locator("#matrix td.cell").nth(250).click()
    p.wait_for_selector("#drill h2")
    p.locator('fieldset[data-filter="outcome"] input[value="conforms"]').uncheck()
    print(f"10,000 cases: report written in {written:.1f} s, {(big / 'index.html').stat().st_size / 1e6:.1f} MB, loaded in {page.load_seconds:.2f} s")
    assert not page.messages, page.messages
