"""Harness pieces that issue 4 added for the framework adapters: introspected
defaults, framework-stored hyperparameter precision (`input_dtypes`,
`in_dtype()`/`float32()` in equations), the flush-to-zero taint, cross-oracles
and the discovery of a framework's own worker environment.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conformance import registry
from conformance.case import Case
from conformance.outcomes import CONFORMS, DIVERGES
from conformance.tolerance import Rounding
from conformance.defaults import rows_for_mode
from conformance.execution import Answer, InProcessHost, WorkerHost, adapter_file
from conformance.kernel import run as kernel_run
from conformance.cells import Cell, Cross, Selection, enumerate_cells, mode_pairs
from conformance.driver import PROFILES, run_cell
from conformance.judging import stored_inputs


def test_defaults_rows_map_tuple_arguments_and_flag_differences(catalog):
    spec = catalog.get("adam")
    mode = spec.mode("tensorflow", "eager")
    native = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False, "weight_decay": None}
    rows = {r["hyperparameter"]: r for r in rows_for_mode(spec, mode, native)}
    assert rows["eps"]["differs"] and rows["eps"]["framework_default"] == 1e-7 and rows["eps"]["canonical_default"] == 1e-8
    assert not rows["beta1"]["differs"] and not rows["lr"]["differs"]
    # weight_decay=None is "no default value" (off), not a difference
    assert rows["weight_decay"]["framework_default"] is None and not rows["weight_decay"]["differs"]

    torch_mode = spec.mode("torch", "forloop")
    rows = {r["hyperparameter"]: r for r in rows_for_mode(spec, torch_mode, {"lr": 0.001, "betas": [0.9, 0.95], "eps": 1e-8})}
    assert rows["beta2"]["argument"] == "betas[1]" and rows["beta2"]["differs"]
    assert rows["beta2"]["stale_declaration"]  # the spec declares 0.999 for torch


def test_stored_inputs_round_in_stages_and_the_schedule_too(catalog):
    spec = catalog.get("rmsprop")
    mode = spec.mode("tensorflow", "v1")  # [float32, tensor]
    case = Case(rule="rmsprop", dtype="bfloat16", params=np.zeros(2), grads=np.ones((2, 2)),
                hyperparameters={"rho": 0.99, "lr": 0.01}, lr_schedule=(0.01, 0.003))
    held = stored_inputs(spec, mode, case)
    assert held.hyperparameters["rho"] == 0.98828125  # 0.99 as a bfloat16
    assert held.lr_schedule == (0.010009765625, 0.0030059814453125)
    assert stored_inputs(spec, mode, held) is held  # idempotent: a recorded case replays unchanged
    keras = spec.mode("tensorflow", "eager")  # lr: float32 only
    kept = stored_inputs(spec, keras, Case(rule="rmsprop", dtype="float64", params=np.zeros(1), grads=np.ones((1, 1)), hyperparameters={"lr": 0.1}))
    assert kept.hyperparameters["lr"] == float(np.float32(0.1)) != 0.1


def test_float32_betas_in_the_bias_correction_are_a_systematic_difference(catalog):
    spec = catalog.get("adam")
    args = dict(hyperparameters={"lr": 1e-3, "eps": 1e-8}, params=np.zeros(1), grads=np.ones((1, 1)), compute_dtype="longdouble")
    canonical = kernel_run(spec, variants=("epsilon_hat",), case_dtype="float32", **args).params[0, 0]
    keras = kernel_run(spec, variants=("epsilon_hat", "bias_correction_float32_betas"), case_dtype="float32", **args).params[0, 0]
    rel = float((keras - canonical) / canonical)
    # alpha_t with float32 betas over alpha_t with exact ones: the step is 6.7e-6 too small
    b1, b2 = float(np.float32(0.9)), float(np.float32(0.999))
    assert rel == pytest.approx(np.sqrt((1 - b2) / 0.001) * (0.1 / (1 - b1)) - 1, rel=1e-6)
    assert -7e-6 < rel < -6e-6


def test_an_increment_below_the_normal_range_is_not_judged():
    r = Rounding("float32", None)
    old = np.array([1e-35, 1.0])
    new = old * 0.999  # the first increment, -1e-38, is subnormal in float32
    r.carry(new, old)
    assert r.taint is not None and list(r.taint) == [True, False]


def test_mode_pairs_join_only_modes_with_one_configuration(catalog):
    adam = catalog.get("adam")
    # foreach rounds scalars; sparse_adam is another optimizer; differentiable and
    # capturable share one branch with float32 bias corrections (a pair of their own, on cuda)
    assert mode_pairs(adam, "torch") == [("forloop", "fused"), ("differentiable", "capturable")]
    assert mode_pairs(adam, "tensorflow") == [("eager", "function"), ("eager", "xla")]  # not v1
    cells = {c.id for c in enumerate_cells(catalog, Selection(rules=("adam",), frameworks=("torch",), dtypes=("float32",)))}
    assert "adam[torch-forloop~fused-cpu-float32]" in cells and "adam[torch-fused-cpu~cuda-float32]" in cells
    assert Cell("adam", "torch", "fused", "cpu", "float32", cross=Cross("device", "cuda")).sides()[1].device == "cuda"
    # a selection that drops one side drops the cross cell
    cells = {c.id for c in enumerate_cells(catalog, Selection(rules=("adam",), frameworks=("torch",), modes=("forloop",)))}
    assert not any("~fused" in c for c in cells)


def _perturbing_adapter(tmp_path: Path, factor: float) -> str:
    path = tmp_path / "perturbed_torch.py"
    path.write_text(textwrap.dedent(f"""
        import importlib.util
        _spec = importlib.util.spec_from_file_location("real_torch_adapter", {adapter_file("torch")!r})
        real = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(real)
        FRAMEWORK = "torch"
        describe = real.describe
        def run(request):
            out = real.run(request)
            if request["mode"] == "fused":
                out["params"] = out["params"] * {factor!r}
            return out
    """))
    return str(path)


@pytest.mark.parametrize("factor, outcome", [(1.0, CONFORMS), (1.0 + 1e-3, DIVERGES)])
def test_cross_oracle_compares_two_modes_without_a_reference(tmp_path, catalog, factor, outcome):
    pytest.importorskip("torch")
    host = WorkerHost("torch", adapter=_perturbing_adapter(tmp_path, factor))
    try:
        cell = Cell("adam", "torch", "forloop", "cpu", "float32", cross=Cross("mode", "fused"))
        result = run_cell(catalog.get("adam"), cell, host, profile=PROFILES["ci"], seed=3, examples=5, database=None)
    finally:
        host.close()
    assert result.outcome == outcome
    if outcome == DIVERGES:
        assert "forloop and fused differ beyond the tolerance" in result.minimal.reason
    else:
        assert any("agree" in r.reason for r in result.records)


def test_worker_python_is_found_by_variable_or_conventional_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("CONFORMANCE_PYTHON_MXNET", raising=False)
    assert registry.worker_python("mxnet", root=tmp_path) is None
    python = tmp_path / ".venv-mxnet" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert registry.worker_python("mxnet", root=tmp_path) == str(python)
    monkeypatch.setenv("CONFORMANCE_PYTHON_MXNET", "/opt/mx/bin/python")
    assert registry.worker_python("mxnet", root=tmp_path) == "/opt/mx/bin/python"
    assert "worker_requirements" and registry.entry("mxnet").worker_requirements == ("mxnet==1.9.1", "numpy<1.24")


def test_torch_defaults_are_introspected_through_the_worker_protocol(catalog):
    pytest.importorskip("torch")
    host = WorkerHost("torch")
    try:
        answer = host.defaults({"optimizer": "torch.optim.Adagrad", "mode": "forloop"})
    finally:
        host.close()
    assert answer.status == "ok"
    assert answer.result["initial_accumulator_value"] == 0 and answer.result["eps"] == 1e-10
    assert isinstance(InProcessHost("torch").defaults({"optimizer": "torch.optim.Adam", "mode": "forloop"}), Answer)


def test_jobs_run_shards_in_parallel_and_merge_them(tmp_path):
    pytest.importorskip("torch")
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "run", "--frameworks", "torch", "--rules", "sgd", "--dtypes", "float32",
         "--devices", "cpu", "--examples", "3", "--seed", "1", "--jobs", "2", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "shard-1-of-2").is_dir() and (out / "shard-2-of-2").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    ids = {c["id"] for c in summary["cells"]}
    assert {"sgd[torch-forloop-cpu-float32]", "sgd[torch-fused-cpu-float32]", "sgd[torch-forloop~fused-cpu-float32]"} <= ids
    assert any(d["framework"] == "torch" for d in summary["defaults"])
    assert {r["mode"] for r in summary["semantics"]} >= {"forloop", "foreach", "fused"}


def test_none_is_an_argument_value_but_never_a_step_value(catalog):
    from conformance.expr import ExprError, compile_expression

    with pytest.raises(ExprError):
        compile_expression("momentum if momentum != 0 else None", {"momentum"})
    off = compile_expression("momentum if momentum != 0 else None", {"momentum"}, allow_none=True)
    assert off({"momentum": 0.0}) is None and off({"momentum": 0.9}) == 0.9
    mode = catalog.get("sgd").mode("jax", "jit")
    assert mode.native_args(catalog.get("sgd").resolve({"momentum": 0.0}))["momentum"] is None


def test_a_hyperparameter_subnormal_where_the_framework_stores_it_is_not_judged(catalog):
    from conformance.judging import skip_reason, stored_inputs

    spec = catalog.get("adagrad")
    mode = spec.mode("tensorflow", "eager")  # Keras rounds the initial accumulator to float32
    case = Case.from_dict({"rule": "adagrad", "dtype": "float64", "params": [1.0], "grads": [[1.0]],
                           "hyperparameters": {"initial_accumulator_value": 1e-45}})
    case = stored_inputs(spec, mode, case)
    why = skip_reason(mode, case, spec.resolve(case.hyperparameters))
    assert why is not None and "subnormal in float32" in why
    normal = Case.from_dict({"rule": "adagrad", "dtype": "float64", "params": [1.0], "grads": [[1.0]],
                             "hyperparameters": {"initial_accumulator_value": 1e-30}})
    assert skip_reason(mode, normal, spec.resolve(normal.hyperparameters)) is None


def test_the_smallest_normal_value_where_the_framework_stores_it_is_not_judged(catalog):
    """CI found MXNet's sgd_mom_update reading wd = 2**-126 (the smallest normal
    float32) as 2**-126 - 2**-149, a subnormal: one step down from there is
    twice a rounding's relative size and lands where flush-to-zero decides."""
    from conformance.judging import skip_reason, stored_inputs

    spec = catalog.get("sgd")
    mode = spec.mode("mxnet", "updater")  # MXNet stores wd as a float32 parameter
    for wd, judged in ((2.0 ** -126, False), (2.0 ** -125, True), (0.01, True)):
        case = Case.from_dict({"rule": "sgd", "dtype": "float64", "params": [1e-6], "grads": [[0.0]],
                               "hyperparameters": {"lr": 1e-3, "momentum": 0.5, "weight_decay": wd}})
        case = stored_inputs(spec, mode, case)
        why = skip_reason(mode, case, spec.resolve(case.hyperparameters))
        assert (why is None) is judged, why
        if not judged:
            assert "the smallest normal number of float32" in why


def test_list_shows_each_package_version_and_finds_worker_environments_as_run_does(tmp_path, monkeypatch):
    """`conformance list` once showed Optax's version as JAX's, and MXNet as not
    available while `run` used its .venv-mxnet (issue 17)."""
    import importlib.metadata

    from conformance.catalog import load_catalog
    from conformance.cli import list_data

    data = list_data(load_catalog())["frameworks"]
    if data["jax"]["installed"]:
        assert data["jax"]["versions"]["jax"] == importlib.metadata.version("jax")
        assert data["jax"]["versions"]["optax"] == importlib.metadata.version("optax")
    # a framework that is not importable here but has a worker environment is
    # runnable through it, as `conformance run` finds it (CONFORMANCE_PYTHON_<NAME>)
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import json; print(json.dumps({{\"mxnet\": \"9.9\"}}))'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CONFORMANCE_PYTHON_MXNET", str(fake))
    mxnet = list_data(load_catalog())["frameworks"]["mxnet"]
    if not mxnet["installed"]:
        assert mxnet["runnable"] and mxnet["python"] == str(fake) and mxnet["versions"] == {"mxnet": "9.9"}
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CONFORMANCE_PYTHON_MXNET", str(broken))
    mxnet = list_data(load_catalog())["frameworks"]["mxnet"]
    if not mxnet["installed"]:
        assert not mxnet["runnable"] and "does not import mxnet" in mxnet["reason"]


def test_setup_worker_with_a_requirement_installs_numpy_and_starts_a_worker(tmp_path, capsys):
    """`setup-worker torch -r torch==X` once installed torch without numpy
    (torch does not require it; every worker does) and then failed (issue 17).
    Now numpy comes with it, and a real worker must start and answer."""
    pytest.importorskip("torch")
    import torch

    from conformance.cli import main

    version = torch.__version__.split("+")[0]
    target = tmp_path / "torch-worker"
    assert main(["setup-worker", "torch", "-r", f"torch=={version}", "--dir", str(target)]) == 0
    out = capsys.readouterr().out
    assert "a worker started and answered" in out and f"torch {version}" in out
    assert (target / "conformance-requirements.txt").read_text().split() == [f"torch=={version}", "numpy"]
    # built once: a second call reuses it
    assert main(["setup-worker", "torch", "-r", f"torch=={version}", "--dir", str(target)]) == 0
    assert "already set up" in capsys.readouterr().out


def test_a_worker_environment_that_cannot_start_is_one_clear_error_before_any_cell(tmp_path, capsys):
    """Issue 17: a broken pinned environment once made every cell 'skipped:
    worker died' and the gate compare 'not run -> crash'."""
    from conformance.cli import main

    broken = tmp_path / "venv" / "bin" / "python"
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\necho 'ImportError: libmxnet.so: cannot open shared object file' >&2\nexit 1\n")
    broken.chmod(0o755)
    out = tmp_path / "run"
    assert main(["run", "--python", f"mxnet={broken}", "--frameworks", "mxnet", "--rules", "sgd", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the mxnet worker environment cannot start a worker: {broken}" in err
    assert "libmxnet.so: cannot open shared object file" in err
    assert f"rebuild it: conformance setup-worker mxnet --dir {tmp_path / 'venv'}" in err
    assert not out.exists()  # nothing ran


def test_a_framework_older_than_its_adapter_was_run_against_is_refused_at_start():
    """The oldest release of each framework that its adapter ran against is
    stated (registry, README) and checked when a worker describes itself."""
    from conformance.execution import Answer, _checked
    from conformance.registry import too_old

    old = _checked("mxnet", Answer("ok", result={"versions": {"mxnet": "1.2.1", "numpy": "1.14.6"}}))
    assert old.status == "crash" and "mxnet 1.2.1 is older than" in old.reason and "mxnet 1.3" in old.reason
    assert _checked("mxnet", Answer("ok", result={"versions": {"mxnet": "1.3.1"}})).status == "ok"
    assert too_old("jax", {"jax": "0.10.2", "optax": "0.2.2"}).startswith("optax 0.2.2 is older")
    assert too_old("torch", {"torch": "2.13.0+cpu"}) is None and too_old("torch", {"torch": "2.14.1+cu128"}) is None
