"""The differential engine end to end: planted bugs are caught, crashes are contained.

These tests run the real PyTorch (CPU) through the real adapter; nothing is mocked.
A spec with a deliberately wrong equation must make a cell `diverge` with the
first divergent step; an adapter that raises, dies or hangs must give `crash`
while the run goes on; a killed run must keep its results.jsonl.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conformance.catalog import builtin_spec_dir
from conformance.outcomes import CONFORMS, CRASH, DIVERGES, KNOWN, UNSUPPORTED
from conformance.execution import InProcessHost, WorkerHost
from conformance.cells import Cell
from conformance.driver import PROFILES, run_cell
from conformance.judging import execute
from conformance.specload import load_spec
from conformance.case import Case

torch = pytest.importorskip("torch")

FAST = PROFILES["ci"]


def planted_spec(tmp_path: Path, old: str, new: str, rule: str = "adam") -> Path:
    text = (builtin_spec_dir() / f"{rule}.yaml").read_text()
    assert old in text
    text = re.sub(r"(?m)^cases: \[.*\]$", "cases: []", text.replace(old, new))
    path = tmp_path / f"{rule}.yaml"
    path.write_text(text)
    return path


def test_planted_wrong_formula_diverges_with_first_step(tmp_path):
    # beta2 in place of beta1 in the first moment: a plausible typo.
    path = planted_spec(tmp_path, "- m = beta1 * m + (1 - beta1) * g", "- m = beta2 * m + (1 - beta2) * g")
    spec = load_spec(path)
    cell = Cell("adam", "torch", "forloop", "cpu", "float64")
    host = InProcessHost("torch")
    result = run_cell(spec, cell, host, profile=FAST, seed=1, examples=30, database=None)
    assert result.outcome == DIVERGES
    m = result.minimal
    assert m is not None and m.verdict is not None
    assert m.verdict.against_expected.first_divergent_step is not None
    assert m.verdict.against_expected.first_divergent_step >= 1
    # shrunk: few steps, a small tensor
    assert m.case.steps <= 2 and m.case.params.size <= 2


def test_planted_wrong_sign_in_sgd_diverges(tmp_path):
    path = planted_spec(tmp_path, "- u = -lr * d", "- u = lr * d", rule="sgd")
    spec = load_spec(path)
    result = run_cell(spec, Cell("sgd", "torch", "foreach", "cpu", "float32"), InProcessHost("torch"), profile=FAST, seed=2, examples=20, database=None)
    assert result.outcome == DIVERGES
    assert result.minimal.verdict.against_expected.first_divergent_step == 1


def test_fixed_case_runs_first_and_separates_epsilon_hat(catalog):
    spec = catalog.get("adam")
    host = InProcessHost("torch")
    dense = run_cell(spec, Cell("adam", "torch", "forloop", "cpu", "float64"), host, profile=FAST, seed=3, examples=0, database=None)
    assert [r.kind for r in dense.records] == ["fixed"] * len(spec.cases)
    assert spec.cases[0].endswith("adam_eps_dominated.json")
    assert all(r.outcome == CONFORMS for r in dense.records)
    sparse = run_cell(spec, Cell("adam", "torch", "sparse_adam", "cpu", "float64"), host, profile=FAST, seed=3, examples=0, database=None)
    r = sparse.records[0]
    assert r.kind == "fixed" and r.outcome == KNOWN
    assert r.verdict.matched_variant == ("epsilon_hat", "lazy")
    assert not r.verdict.against_canonical.ok


def _adapter(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake_adapter.py"
    path.write_text(textwrap.dedent(
        """
        import os, sys, time
        FRAMEWORK = "torch"
        def describe():
            return {"framework": "torch", "versions": {}, "devices": {"cpu": {"available": True}}}
        def run(request):
        """
    ) + textwrap.indent(textwrap.dedent(body), "    "))
    return str(path)


@pytest.mark.parametrize(
    "body, expect",
    [
        ("raise RuntimeError('boom from the framework')", "RuntimeError: boom"),
        ("os.abort()", "died: killed by signal"),
        ("os._exit(3)", "died: exited with status 3"),
        ("time.sleep(60)", "hung"),
    ],
)
def test_crashing_adapter_is_a_crash_and_the_run_goes_on(tmp_path, catalog, body, expect):
    spec = catalog.get("sgd")
    cell = Cell("sgd", "torch", "forloop", "cpu", "float64")
    host = WorkerHost("torch", adapter=_adapter(tmp_path, body))
    try:
        result = run_cell(spec, cell, host, profile=FAST, seed=4, examples=3, timeout=3, database=None)
        assert result.outcome == CRASH
        assert expect in result.records[0].reason
        # the same host serves the next cell: the worker is restarted after a death
        again = run_cell(spec, cell, host, profile=FAST, seed=5, examples=1, timeout=3, database=None)
        assert again.outcome == CRASH and expect in again.records[0].reason
    finally:
        host.close()


def test_real_worker_runs_torch_and_reports_versions(catalog):
    host = WorkerHost("torch")
    try:
        info = host.describe()
        assert info.status == "ok" and info.result["versions"]["torch"] == torch.__version__
        assert info.result["devices"]["cuda"]["available"] == torch.cuda.is_available()
        case = Case.load(builtin_spec_dir() / "cases" / "adam_eps_dominated.json")
        from conformance.judging import retarget

        spec = catalog.get("adam")
        cell = Cell("adam", "torch", "fused", "cpu", "float32")
        record = execute(spec, cell, retarget(case, cell, spec.mode("torch", "fused")), host)
        assert record.outcome == CONFORMS, record.reason
    finally:
        host.close()


def test_cuda_cell_skips_with_reason_without_cuda(catalog):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cell(catalog.get("adam"), Cell("adam", "torch", "fused", "cuda", "float32"), InProcessHost("torch"), profile=FAST, seed=1)
    assert result.outcome == UNSUPPORTED and "CUDA is not available" in result.skipped


def test_killed_run_keeps_its_results(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conformance", "run", "--frameworks", "torch", "--rules", "adam", "--devices", "cpu",
         "--examples", "200", "--out", str(out), "--no-progress", "--jobs", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    results = out / "results-main.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if results.exists() and len(results.read_text().splitlines()) >= 5:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    lines = [json.loads(l) for l in results.read_text().splitlines() if l.strip()]
    assert len(lines) >= 5
    assert all(l["outcome"] in (CONFORMS, KNOWN, UNSUPPORTED) for l in lines if "outcome" in l)
    assert not (out / "summary.json").exists()
    # the merge command summarizes what the killed run kept
    done = subprocess.run([sys.executable, "-m", "conformance", "merge", str(out), "-o", str(tmp_path / "merged")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert sum(sum(c["counts"].values()) for c in summary["cells"]) >= 5


def test_a_fixed_case_whose_inputs_overflow_the_dtype_is_not_run_there(catalog):
    """The pinned float32 rmsprop case has gradients of 6.8e5: beyond float16, so
    its float16 cells leave it out (its records would hold inf), the others run it."""
    from conformance.judging import retarget

    case = Case.load(Path(builtin_spec_dir()) / "cases" / "rmsprop_centered_signed_sum.json")
    assert retarget(case, Cell("rmsprop", "torch", "forloop", "cpu", "float16")) is None
    for dtype in ("bfloat16", "float32", "float64"):
        assert retarget(case, Cell("rmsprop", "torch", "forloop", "cpu", dtype)).dtype == dtype


def test_explore_saves_each_counterexample_as_a_case_file_a_spec_pins(tmp_path, capsys):
    """`conformance explore` (random seed, profile dev) saves each failing
    cell's shrunk case; pinned in the spec's `cases:`, it runs first in every
    later run, derandomized ones included."""
    from conformance.cli import main

    text = (builtin_spec_dir() / "adam.yaml").read_text()
    text = re.sub(r"(?m)^cases: \[.*\]$", "cases: []", text.replace("- m = beta1 * m + (1 - beta1) * g", "- m = beta2 * m + (1 - beta2) * g"))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "myadam.yaml").write_text(text)
    found = specs / "found"
    argv = ["--specs", str(specs), "--rules", "myadam", "--frameworks", "torch", "--modes", "forloop", "--dtypes", "float64",
            "--gradients", "dense", "--examples", "10", "--jobs", "1", "--isolation", "inprocess", "--no-progress"]
    assert main(["explore", *argv, "--out", str(tmp_path / "run"), "--save-cases", str(found)]) == 1
    out = capsys.readouterr().out
    assert "explore: 1 counterexample(s), seed " in out and "profile dev" in out
    [case_file] = found.glob("*.json")
    assert json.loads(case_file.read_text())["rule"] == "myadam"
    # pinned: the spec's cases list names it, and a ci-profile run replays it first
    (specs / "myadam.yaml").write_text(text.replace("cases: []", f"cases: [found/{case_file.name}]"))
    assert main(["run", *argv, "--examples", "0", "--out", str(tmp_path / "pinned")]) == 1
    records = [json.loads(line) for f in (tmp_path / "pinned").glob("results*.jsonl") for line in f.read_text().splitlines()]
    assert [r["kind"] for r in records if "outcome" in r][0] == "fixed" and records[0]["outcome"] == "diverges"


def test_a_seeded_cell_draws_the_same_cases_whatever_was_imported_before(tmp_path):
    """Hypothesis draws some values from constants of the local modules
    loaded in the process; a run empties that pool, so that the derandomized
    ci profile draws the same cases in every pytest-xdist worker whatever ran
    there before (measured: four more modules changed every case) and after
    any change to the harness's source (measured: a session's changes made
    the gate against the committed baseline fail 24 cells)."""
    script = textwrap.dedent('''
        import sys, json, hashlib
        import torch
        if sys.argv[1] == "1":
            import conformance.report, conformance.gate, conformance.reproducer, conformance.evidence
        if sys.argv[1] == "2":  # a local module with constants of its own (as a change to the harness adds)
            sys.path.insert(0, sys.argv[2])
            import local_constants_here
        from conformance.catalog import load_catalog
        from conformance.execution import InProcessHost
        from conformance.cells import Cell
        from conformance.driver import PROFILES, run_cell
        r = run_cell(load_catalog().get("adam"), Cell("adam", "torch", "forloop", "cpu", "float16"), InProcessHost("torch"),
                     profile=PROFILES["ci"], seed=0, database=None)
        print(hashlib.sha1(json.dumps([x.case.to_dict() for x in r.records if x.case is not None]).encode()).hexdigest())
    ''')
    path = tmp_path / "draw.py"
    path.write_text(script)
    (tmp_path / "local_constants_here.py").write_text("WIDTH = 1234567\nSCALE = 0.00123456789\nNAME = 'adam[torch-forloop]'\n")
    runs = [subprocess.run([sys.executable, str(path), flag, str(tmp_path)], capture_output=True, text=True, check=True).stdout.split()[-1]
            for flag in "012"]
    assert runs[0] == runs[1] == runs[2]


def test_a_rule_defined_for_matrices_draws_matrices_only(catalog):
    from hypothesis import HealthCheck, given, settings

    from conformance import strategies

    spec = catalog.get("muon")
    assert spec.ranks == (2,)
    seen = set()

    @settings(max_examples=40, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(strategies.cases(spec, spec.mode("jax", "jit"), device="cpu", dtype="float32"))
    def draw(case):
        seen.add(case.params.ndim)

    draw()
    assert seen == {2}
    assert catalog.get("adam").ranks == (0, 1, 2, 3)
