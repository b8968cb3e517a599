"""The adapter contract, held against every registered framework.

conformance/protocol.py writes the seam down; this suite checks each
adapter in the registry against it, through the same worker host a run
uses (so MXNet runs in its own environment): a description that names the
framework, its versions and exactly the registry's devices; an answer of the
requested shape for the default path of every rule it has a section for;
native defaults for each optimizer; an unknown optimizer answered (not a
dead worker); and a verdict on a plain case. A framework that is not
installed here is skipped with the reason; a new framework in the registry
is checked without a line added here. Real frameworks, nothing mocked.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

from conformance import registry
from conformance.case import Case
from conformance.cells import Cell
from conformance.execution import make_host
from conformance.judging import build_request, execute
from conformance.outcomes import CONFORMS, KNOWN, UNSUPPORTED
from conformance.protocol import AdapterResult

PARAMS = np.array([[0.5, -1.0, 2.0], [0.25, -0.125, 1.5]])
GRADS = np.array([[[0.1, -0.2, 0.3], [0.05, 0.4, -0.6]],
                  [[-0.3, 0.1, 0.2], [0.5, -0.25, 0.125]],
                  [[0.2, 0.2, -0.1], [-0.4, 0.3, 0.6]]])


def _host(framework: str):
    entry = registry.entry(framework)
    python = registry.worker_python(framework)
    if python is None and importlib.util.find_spec(entry.module) is None:
        pytest.skip(f"{entry.title} is not installed here and has no worker environment (README: Environments)")
    return make_host(framework, "worker", python)


@pytest.fixture(scope="module", params=list(registry.FRAMEWORKS))
def framework(request):
    host = _host(request.param)
    yield request.param, host
    host.close()


def _default_modes(catalog, framework: str):
    """(spec, mode name, mode) of each rule's default path on this framework: the first mode its section lists."""
    out = []
    for spec in catalog:
        names = [m for (fw, m) in spec.modes if fw == framework]
        if names:
            out.append((spec, names[0], spec.mode(framework, names[0])))
    return out


def _case(spec, framework: str, mode_name: str, dtype: str = "float32") -> Case:
    shape = PARAMS.shape if not spec.ranks or 2 in spec.ranks else PARAMS.shape[1:]
    params, grads = PARAMS.reshape(shape), GRADS.reshape((3,) + shape)
    return Case(spec.rule, dtype, params, grads, dict(spec.defaults), framework, mode=mode_name, device="cpu")


def test_describe_names_the_framework_its_versions_and_exactly_the_registry_devices(framework):
    name, host = framework
    answer = host.describe()
    assert answer.status == "ok", answer.reason
    d = answer.result
    assert d["framework"] == name
    assert isinstance(d["versions"], dict) and d["versions"], "the run header and the gate need the versions"
    assert tuple(d["devices"]) == registry.entry(name).devices
    for device, info in d["devices"].items():
        assert isinstance(info["available"], bool)
        if not info["available"]:
            assert info.get("reason"), f"{device} is absent without a reason"
    assert d["devices"]["cpu"]["available"]
    assert registry.too_old(name, {k: str(v) for k, v in d["versions"].items() if v}) is None


def test_every_rules_default_path_answers_in_the_requested_shape(framework, catalog):
    name, host = framework
    checked = 0
    for spec, mode_name, mode in _default_modes(catalog, name):
        if mode.gradients == "sparse" or mode.imports:
            continue
        case = _case(spec, name, mode_name)
        request = build_request(spec, mode, case)
        answer = host.run(request, 120)
        assert answer.status in ("ok", "unsupported"), f"{spec.rule} {mode_name}: {answer.reason}\n{answer.detail}"
        if answer.status == "unsupported":
            assert answer.reason, f"{spec.rule} {mode_name}: unsupported without a reason"
            continue
        result = AdapterResult.from_wire(answer.result, case.steps, case.shape)
        assert set(result.state) <= set(request.state), f"{spec.rule}: slots nobody asked for: {set(result.state) - set(request.state)}"
        for slot, values in result.state.items():
            assert values.shape == (case.steps,) + case.shape, f"{spec.rule} {slot}: {values.shape}"
        assert np.isfinite(result.params).all()
        checked += 1
    assert checked, f"no rule has a default {name} path to check"


def test_every_optimizer_reports_its_native_defaults(framework, catalog):
    name, host = framework
    for spec, mode_name, mode in _default_modes(catalog, name):
        if mode.imports:
            continue
        answer = host.defaults({"optimizer": mode.optimizer, "mode": mode.mode})
        assert answer.status == "ok", f"{mode.optimizer}: {answer.reason}"
        assert isinstance(answer.result, dict)


def test_an_unknown_optimizer_is_an_answer_and_the_worker_serves_on(framework, catalog):
    name, host = framework
    spec, mode_name, mode = next((s, n, m) for s, n, m in _default_modes(catalog, name) if s.rule == "sgd")
    case = _case(spec, name, mode_name)
    bad = replace(build_request(spec, mode, case), optimizer=mode.optimizer.rsplit(".", 1)[0] + ".NoSuchOptimizer")
    answer = host.run(bad, 120)
    assert answer.status in ("crash", "unsupported") and answer.reason
    again = host.run(build_request(spec, mode, case), 120)
    assert again.status == "ok", again.reason


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_plain_sgd_case_gets_a_verdict_of_the_declared_rule(framework, catalog, dtype):
    name, host = framework
    spec, mode_name, mode = next((s, n, m) for s, n, m in _default_modes(catalog, name) if s.rule == "sgd")
    if mode.dtypes and dtype not in mode.dtypes:
        pytest.skip(f"{name} {mode_name} does not run {dtype}")
    case = _case(spec, name, mode_name, dtype)
    case = Case(case.rule, dtype, case.params, case.grads, {**case.hyperparameters, "lr": 0.1, "momentum": 0.9},
                name, mode=mode_name, device="cpu")
    record = execute(spec, Cell("sgd", name, mode_name, "cpu", dtype), case, host)
    assert record.outcome in (CONFORMS, KNOWN, UNSUPPORTED), f"{record.outcome}: {record.reason}"
    if record.outcome != UNSUPPORTED:
        assert record.observed is not None and record.observed.params.shape == (case.steps,) + case.shape
