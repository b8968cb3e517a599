"""Standalone reproducers, run on their own against the real frameworks.

For each framework mode, one case is run the way a conformance run runs
it (a worker process, the spec's arguments), its record becomes a script
(conformance/reproducer.py plus the adapter's script module), and the
script runs in a fresh interpreter that has only numpy and the framework.
What it prints must say what the run found: it matches the reference the
verdict accepted, and it differs, beyond rounding, from the one the verdict
rejected (the canonical rule, for a declared variant that the case shows).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess

import pytest

from conformance.case import Case
from conformance.outcomes import CONFORMS, KNOWN
from conformance.cross import execute_cross
from conformance.execution import make_host
from conformance.registry import FRAMEWORKS, entry, worker_python
from conformance.reproducer import literal, script
from conformance.cells import Cell, Cross
from conformance.judging import execute

#: eps comparable to sqrt(v): Adam's epsilon_hat and Algorithm 1 differ at step 1
ADAM = {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 0.05, "weight_decay": 0.0, "amsgrad": False, "maximize": False}
PARAMS = [[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]]
GRADS = [[[0.01, -0.02], [0.03, 0.0], [-0.01, 0.04]], [[0.02, 0.01], [-0.03, 0.05], [0.0, -0.02]]]

#: one mode per framework and dtype, with the outcome the run must find
CELLS = [
    ("torch", "forloop", "float32", CONFORMS),
    ("torch", "fused", "float64", CONFORMS),
    ("tensorflow", "eager", "float32", KNOWN),  # Keras: epsilon_hat
    ("tensorflow", "xla", "float64", KNOWN),
    ("tensorflow", "v1", "float32", KNOWN),
    ("jax", "eager", "float32", CONFORMS),
    ("jax", "jit", "float64", CONFORMS),
    ("mxnet", "updater", "float32", KNOWN),  # MXNet Adam: epsilon_hat
]


def _python(framework: str) -> str:
    """The interpreter that has this framework (skip the test where none has)."""
    e = entry(framework)
    if framework == "mxnet":
        python = worker_python("mxnet")
        if python is None:
            pytest.skip("no MXNet environment (conformance setup-worker mxnet)")
        return python
    if importlib.util.find_spec(e.module) is None:
        pytest.skip(f"{e.module} is not installed")
    import sys

    return sys.executable


def _run_script(source: str, python: str, tmp_path) -> str:
    path = tmp_path / "repro.py"
    path.write_text(source, encoding="utf-8")
    done = subprocess.run([python, str(path)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"the reproducer failed:\n{done.stderr[-3000:]}\n--- script ---\n{source[-3000:]}"
    return done.stdout


def _verdicts(output: str) -> dict[str, str]:
    """'=> matches NAME within rounding' / '=> DIFFERS from NAME ...' per reference."""
    out = {}
    for m in re.finditer(r"^=> (matches|DIFFERS from) (.+?)(?: within rounding| beyond rounding)", output, re.M):
        out[m.group(2)] = "matches" if m.group(1) == "matches" else "differs"
    return out


@pytest.mark.parametrize("framework, mode, dtype, outcome", CELLS, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CELLS])
def test_reproducer_shows_what_the_run_found(catalog, tmp_path, framework, mode, dtype, outcome):
    python = _python(framework)
    spec = catalog.get("adam")
    if (framework, mode) not in spec.modes:
        pytest.skip(f"adam has no {framework} mode {mode}")
    cell = Cell("adam", framework, mode, "cpu", dtype)
    case = Case.from_dict({"rule": "adam", "framework": framework, "mode": mode, "device": "cpu", "dtype": dtype,
                           "hyperparameters": ADAM, "params": PARAMS, "grads": GRADS})
    host = make_host(framework, "worker", python if framework == "mxnet" else None)
    try:
        record = execute(spec, cell, case, host)
    finally:
        host.close()
    assert record.outcome == outcome, record.reason
    data = record.to_json(with_case=True)
    source = script(spec, data)
    assert source is not None and f"import {entry(framework).module}" in source
    said = _verdicts(_run_script(source, python, tmp_path))
    declared = "declared " + "+".join(record.verdict.expected) if record.verdict.expected else "canonical"
    assert said.get(declared) == "matches", said
    if outcome == KNOWN:
        # the declared variant is what the case shows: the canonical rule is missed
        assert said.get("canonical") == "differs", said


def test_cross_cell_reproducer_runs_both_sides(catalog, tmp_path):
    python = _python("torch")
    spec = catalog.get("adam")
    cell = Cell("adam", "torch", "forloop", "cpu", "float32", cross=Cross("mode", "foreach"))
    case = Case.from_dict({"rule": "adam", "framework": "torch", "mode": "forloop", "device": "cpu", "dtype": "float32",
                           "hyperparameters": ADAM, "params": PARAMS, "grads": GRADS})
    host = make_host("torch", "worker")
    try:
        record = execute_cross(spec, cell, case, host)
    finally:
        host.close()
    assert record.outcome == CONFORMS, record.reason
    output = _run_script(script(spec, record.to_json(with_case=True)), python, tmp_path)
    assert "== foreach against forloop" in output
    assert _verdicts(output) == {"canonical": "matches", "forloop": "matches"}


def test_script_data_is_exact():
    import numpy as np

    values = np.array([[0.1, -0.0], [np.nan, np.inf], [5e-324, -np.inf]])
    back = eval(literal(values), {"np": np, "inf": np.inf, "nan": np.nan})  # noqa: S307 (our own literal, in a test)
    assert np.array_equal(back, values, equal_nan=True)
    assert np.signbit(back[0, 1])
    # bounds are written short, never tighter than computed
    bounds = np.array([1.23456e-7, 9.99951, 3.0, 1e300, 5e-324, np.inf])
    short = eval(literal(bounds, digits=3), {"np": np, "inf": np.inf, "nan": np.nan})  # noqa: S307
    assert (short >= bounds).all() and (short <= bounds * 1.01 + 1e-320).all()


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_every_framework_has_a_script_module(framework):
    from conformance.reproducer import script_module

    module = script_module(framework)
    assert module is not None and callable(module.run_source) and callable(module.imports)
