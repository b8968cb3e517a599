"""The precision axis on the real frameworks (issue 14): a float64 case whose
framework keeps hyperparameters in float32 is `precision-loss` with its size
and cause, a bfloat16 case whose parameters never move is `stalled`, float16
Adam with eps 1e-8 and a zero gradient is `nonfinite`; and the controls stay
clean (torch's fused float16 Adam, which computes in float32; ordinary
float32 cases). Torch is imported before TensorFlow (see
test_adapter_tensorflow.py).
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401  (import order)

from conformance.case import Case
from conformance.outcomes import CONFORMS, DIVERGES, KNOWN
from conformance.dtypes import round_to
from conformance.execution import InProcessHost
from conformance.gate import baseline, compare as gate_compare
from conformance.precision import EXACT, NONFINITE, PRECISION_LOSS, STALLED, degenerate, pieces
from conformance.summary import cell_fails, summarize
from conformance.cells import Cell
from conformance.driver import PROFILES, run_cell
from conformance.judging import execute
from conformance.specload import load_spec

SPECS = Path(__file__).resolve().parents[1] / "specs"


def _case(rule, fw, mode, dtype, hp, params, grads):
    return Case(rule=rule, framework=fw, mode=mode, device="cpu", dtype=dtype, params=round_to(np.array(params, float), dtype),
                grads=round_to(np.array(grads, float), dtype), hyperparameters=hp)


def _run(catalog, rule, fw, mode, dtype, hp, params, grads, spec=None):
    spec = spec or catalog.get(rule)
    return execute(spec, Cell(rule, fw, mode, "cpu", dtype), _case(rule, fw, mode, dtype, hp, params, grads), InProcessHost(fw))


# ---------------------------------------------------------------- the three findings, on real frameworks


def test_keras_float64_adam_is_precision_loss_from_its_float32_learning_rate(catalog):
    pytest.importorskip("tensorflow")
    r = _run(catalog, "adam", "tensorflow", "eager", "float64", {"lr": 0.0123}, [0.5, 1.0], [[0.3, 1.0]] * 3)
    assert r.outcome == KNOWN and not r.failing  # the semantics axis: Keras' declared rule
    p = r.precision
    assert p.outcome == PRECISION_LOSS and p.declared
    assert "lr stored as float32 (0.0123 held as 0.012299999594688416)" in p.cause
    assert "bias_correction_float32_betas" in p.cause
    # the size: about 5e-7 relative, billions of float64 ulps, far beyond the own-dtype bound
    assert 1e-7 < p.max_rel_error < 1e-5 and p.max_ulp_error > 1e8 and p.margin > 1e6
    assert (p.first_step, p.slot) == (1, "p")
    # the record keeps the user's hyperparameters (the framework got the stored ones)
    assert r.case.hyperparameters["lr"] == 0.0123


def test_tf1_float64_adam_names_its_float32_beta_powers(catalog):
    pytest.importorskip("tensorflow")
    r = _run(catalog, "adam", "tensorflow", "v1", "float64", {"lr": 0.0123}, [0.5, 1.0], [[0.3, 1.0]] * 6)
    assert r.outcome in (CONFORMS, KNOWN)
    p = r.precision
    assert p.outcome == PRECISION_LOSS and p.declared and p.max_rel_error > 1e-6
    assert "known issue: tf.compat.v1.train.AdamOptimizer keeps beta1_power and beta2_power as float32" in p.cause


def test_keras_bfloat16_adam_stalls_because_beta2_rounds_to_1(catalog):
    pytest.importorskip("tensorflow")
    r = _run(catalog, "adam", "tensorflow", "eager", "bfloat16", {"beta2": 0.999, "lr": 1e-2}, [0.5, 1.0], [[0.3, 1.0]] * 3)
    assert not r.failing  # declared: Keras casts the hyperparameters to bfloat16
    np.testing.assert_array_equal(r.observed.params[-1], [0.5, 1.0])  # it never moved
    p = r.precision
    assert p.outcome == STALLED and p.declared and p.elements == 2
    assert "beta2 = 0.999 rounds to 1.0 in bfloat16" in p.cause
    assert "hyperparameters cast to bfloat16 before their arithmetic" in p.cause
    assert p.exact_value == pytest.approx(0.47, abs=1e-3)


def test_torch_float16_adam_with_eps_1e8_and_a_zero_gradient_is_nonfinite(catalog):
    pytest.importorskip("torch")
    r = _run(catalog, "adam", "torch", "forloop", "float16", {"eps": 1e-8, "lr": 1e-3}, [0.5, 1.0], [[0.0, 1.0]] * 3)
    assert r.outcome == CONFORMS and not r.failing  # the dtype's own arithmetic explains it: declared
    assert np.isnan(r.observed.params[0, 0])
    p = r.precision
    assert p.outcome == NONFINITE and p.declared
    assert (p.first_step, p.slot, p.element, p.exact_value) == (1, "p", (0,), 0.5)
    assert "eps = 1e-08 rounds to 0.0 in float16" in p.cause
    assert "first non-finite in float16: u = -lr * m_hat / (sqrt(v_hat) + eps) at step 1, element [0] (its gradient is 0 so far)" in p.cause


def test_torch_bfloat16_centered_rmsprop_nan_from_a_cancelling_variance_is_nonfinite_not_diverges(catalog):
    """Found by the thorough run (torch foreach, bfloat16): a constant gradient
    (weight decay on a large parameter) makes centered RMSprop's variance
    v - g_avg**2 cancel to within rounding of 0; torch's order of operations
    rounds it below 0 and sqrt gives NaN. The dtype decides the sign, so the
    element is not judged on the semantics axis (the case conforms) and the
    precision axis names the NaN and its cause."""
    pytest.importorskip("torch")
    hp = {"lr": 0.01, "rho": 0.6875, "eps": 1e-08, "momentum": 0.0, "centered": True, "weight_decay": 0.01}
    r = _run(catalog, "rmsprop", "torch", "foreach", "bfloat16", hp, 315392.0, [0.0] * 13)
    assert np.isnan(r.observed.params[-1])
    assert r.outcome == CONFORMS and not r.failing
    p = r.precision
    assert p.outcome == NONFINITE and p.declared and p.first_step == 13
    assert "a square root's or sign's argument is within rounding of 0 in bfloat16 (a cancellation)" in p.cause
    assert set(p.unjudged) == {"sqrt or sign of a cancellation"} and p.unjudged["sqrt or sign of a cancellation"] > 0


def test_a_square_root_of_a_sum_of_squares_is_always_determined(catalog):
    """Control: Adam's sqrt(v_hat) is a sum of squares, which rounding spreads by
    a relative amount only (30 steps of bfloat16 with directed roundings): no
    element becomes undetermined."""
    from conformance.tolerance import reference
    from conformance.tolerance import tolerance_for

    spec = catalog.get("adam")
    case = _case("adam", "torch", "forloop", "bfloat16", {}, [0.5, -2.0, 3.0], [[0.1, -0.2, 0.0], [-0.1, 0.3, 0.0]] * 15)
    ref = reference(spec, case, (), tolerance_for(spec, "bfloat16"))
    assert ref.undetermined is not None and not ref.undetermined.any()


# ---------------------------------------------------------------- controls


def test_torch_fused_float16_adam_computes_in_float32_and_has_no_finding(catalog):
    pytest.importorskip("torch")
    r = _run(catalog, "adam", "torch", "fused", "float16", {"eps": 1e-8, "lr": 1e-3}, [0.5, 1.0], [[0.0, 1.0]] * 3)
    assert np.isfinite(r.observed.params).all()
    assert r.precision.outcome == EXACT and not r.precision.finding


@pytest.mark.parametrize("rule, fw, mode", [("adam", "torch", "forloop"), ("rmsprop", "torch", "foreach"), ("sgd", "torch", "fused"), ("adagrad", "torch", "forloop")])
def test_ordinary_float32_cases_get_no_precision_finding(catalog, rule, fw, mode):
    pytest.importorskip(fw)
    result = run_cell(catalog.get(rule), Cell(rule, fw, mode, "cpu", "float32"), InProcessHost(fw), profile=PROFILES["ci"], seed=11, examples=20, database=None)
    found = [(r.precision.outcome, r.precision.cause) for r in result.records if r.precision is not None and r.precision.finding]
    assert result.records and not found


# ---------------------------------------------------------------- undeclared precision


def _without_tf1_precision(tmp_path: Path) -> Path:
    """The adam spec with TF1's declared precision removed (float64 scalars, no
    stored dtypes, no known issue): a planted omission."""
    s = (SPECS / "adam.yaml").read_text(encoding="utf-8")
    start, end = s.index("      v1:\n"), s.index("      legacy:\n")
    v1 = s[start:end].replace("        hyperparameter_dtype: float32\n", "        hyperparameter_dtype: float64\n")
    v1 = re.sub(r"        input_dtypes: \{[^\n]*\}\n", "        input_dtypes: {}\n", v1)
    s = s[:start] + v1 + s[end:]
    s = s[: s.index("    known_issues:\n      - modes: [v1]")] + s[s.index("    modes:\n      eager: {}"):]
    s = s.replace("cases: [cases/adam_eps_dominated.json, cases/adam_beta_rounding.json]", "cases: []")
    path = tmp_path / "adam.yaml"
    path.write_text(s, encoding="utf-8")
    return path


def test_an_undeclared_precision_loss_fails_and_names_the_model_that_explains_it(catalog, tmp_path):
    pytest.importorskip("tensorflow")
    spec = load_spec(_without_tf1_precision(tmp_path))
    r = _run(catalog, "adam", "tensorflow", "v1", "float64", {"lr": 0.0123}, [0.5, 1.0], [[0.3, 1.0]] * 6, spec=spec)
    assert r.outcome == DIVERGES and r.failing
    p = r.precision
    assert p.outcome == PRECISION_LOSS and not p.declared and p.failing
    assert "every hyperparameter held as float32" in p.cause and "undeclared precision loss" in r.reason


# ---------------------------------------------------------------- pieces, summary, --fail-on, gate


def test_pieces_and_degenerate_hyperparameters_name_what_acts_on_a_case(catalog):
    spec = catalog.get("adam")
    keras = spec.mode("tensorflow", "eager")
    case = _case("adam", "tensorflow", "eager", "bfloat16", {"beta2": 0.999, "lr": 0.01}, [0.5], [[0.3]])
    kinds = [p.kind for p in pieces(spec, keras, case, keras.expect)]
    assert kinds == ["input", "hyperparameter_dtype", "variant"]
    assert degenerate(spec, keras, case) == ["beta2 = 0.999 rounds to 1.0 in bfloat16"]
    torch_fl = spec.mode("torch", "forloop")
    f64 = _case("adam", "torch", "forloop", "float64", {"lr": 0.01}, [0.5], [[0.3]])
    assert pieces(spec, torch_fl, f64, torch_fl.expect) == [] and degenerate(spec, torch_fl, f64) == []


def _records(precision, cell="adam[tensorflow-eager-cpu-float64]"):
    return {"cell": cell, "rule": "adam", "framework": "tensorflow", "mode": "eager", "device": "cpu", "dtype": "float64",
            "outcome": "known-divergence", "phase": "generate", "precision": precision}


def test_summary_precision_table_fail_on_and_gate(tmp_path):
    import json

    loss = {"outcome": "precision-loss", "declared": True, "cause": "declared: lr stored as float32", "max_rel_error": 5e-7, "max_ulp_error": 4e9,
            "max_abs_error": 1e-7, "margin": 1e7}
    run = tmp_path / "run"
    run.mkdir()
    (run / "results-main.jsonl").write_text("\n".join(json.dumps(_records(x)) for x in (loss, {"outcome": "exact"})) + "\n")
    summary = summarize([run])
    [cell] = summary["cells"]
    assert cell["precision"] == "precision-loss" and cell["precision_counts"] == {"precision-loss": 1, "exact": 1}
    assert cell["precision_causes"] == {"precision-loss: declared: lr stored as float32": 1}
    [row] = summary["precision"]
    assert (row["measured"], row["dtype"], row["max_rel_error"]) == ("precision-loss", "float64", 5e-7)
    assert summary["failed"] == [] and not cell_fails(cell)  # declared: reported, passes
    assert cell_fails(cell, {"precision-loss"})  # --fail-on precision-loss
    # an undeclared finding fails by default
    (run / "results-main.jsonl").write_text(json.dumps(_records(dict(loss, declared=False))) + "\n")
    assert summarize([run])["failed"] == ["adam[tensorflow-eager-cpu-float64]"]
    # the gate: exact before, precision-loss after, fails naming the cell
    (run / "results-main.jsonl").write_text(json.dumps(_records({"outcome": "exact"})) + "\n")
    before = baseline(summarize([run]))
    (run / "results-main.jsonl").write_text(json.dumps(_records(loss)) + "\n")
    after = baseline(summarize([run]))
    result = gate_compare(before, after)
    assert not result["passed"]
    [e] = result["entries"]
    assert (e["kind"], e["cell"], e["before"], e["after"], e["fails"]) == ("precision", "adam[tensorflow-eager-cpu-float64]", "exact", "precision-loss", True)
    # and back: an improvement, noted
    back = gate_compare(after, before)
    assert back["passed"] and back["entries"][0]["kind"] == "precision"


def test_fail_on_makes_a_declared_finding_fail_the_cell(catalog):
    pytest.importorskip("torch")
    spec = catalog.get("adam")
    cell = Cell("adam", "torch", "forloop", "cpu", "float16")
    kwargs = dict(profile=PROFILES["ci"], seed=3, examples=30, database=None)
    plain = run_cell(spec, cell, InProcessHost("torch"), **kwargs)
    assert not plain.failed and plain.precision == NONFINITE  # declared (eps 1e-8 in float16): passes
    strict = run_cell(spec, cell, InProcessHost("torch"), fail_on=frozenset({"nonfinite"}), **kwargs)
    assert strict.failed and strict.minimal is not None and strict.minimal.precision.outcome == NONFINITE


def test_torch_differentiable_adam_has_float32_bias_corrections_and_rmsprop_has_none(catalog):
    """Every implementation path is a mode: torch's differentiable=True Adam
    takes the step count as a float32 tensor (torch/optim/adam.py
    _single_tensor_adam, `if capturable or differentiable`), so a float64
    model gets float32-precision bias corrections; RMSprop's differentiable
    path is forloop's, bit for bit."""
    pytest.importorskip("torch")
    adam = _run(catalog, "adam", "torch", "differentiable", "float64", {"lr": 0.0123}, [0.5, 1.0], [[0.3, 1.0]] * 6)
    assert adam.outcome == CONFORMS and adam.precision.outcome == PRECISION_LOSS and adam.precision.declared
    assert "hyperparameters passed to the kernels as float32" in adam.precision.cause and adam.precision.max_rel_error > 1e-7
    forloop = _run(catalog, "adam", "torch", "forloop", "float64", {"lr": 0.0123}, [0.5, 1.0], [[0.3, 1.0]] * 6)
    assert forloop.precision.outcome == EXACT
    hp = {"lr": 0.0123, "momentum": 0.5, "centered": True}
    rms = _run(catalog, "rmsprop", "torch", "differentiable", "float64", hp, [0.5, 1.0], [[0.3, 1.0], [-1.0, 2.0]] * 3)
    ref = _run(catalog, "rmsprop", "torch", "forloop", "float64", hp, [0.5, 1.0], [[0.3, 1.0], [-1.0, 2.0]] * 3)
    assert rms.precision.outcome == EXACT
    np.testing.assert_array_equal(rms.observed.params, ref.observed.params)


def test_unjudged_elements_are_counted_with_their_reason_in_the_cell(tmp_path):
    """No element is silently not judged: the cell sums each case's counts."""
    import json

    p = {"outcome": "nonfinite", "declared": True, "cause": "eps = 1e-08 rounds to 0.0 in float16", "out_of_range": 2,
         "unjudged": {"subnormal intermediates": 6}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "results-main.jsonl").write_text("\n".join(json.dumps(_records(p)) for _ in range(2)) + "\n")
    [cell] = summarize([run])["cells"]
    assert cell["precision_unjudged"] == {"the exact rule leaves the dtype's range": 4, "subnormal intermediates": 12}


def test_a_move_below_the_normal_range_is_unjudged_not_stalled(catalog):
    """TensorFlow flushes subnormals to zero on the CPU: a parameter whose
    update is subnormal stays still where numpy's arithmetic moves it. That is
    not judged (counted), never a `stalled` finding (a thorough run found it)."""
    pytest.importorskip("tensorflow")
    r = _run(catalog, "adagrad", "tensorflow", "eager", "float32", {"lr": 0.01}, [0.0, 0.5], [[1e-39, 0.1]] * 2)
    assert r.observed.params[-1, 0] == 0.0  # the subnormal gradient was flushed: it never moved (numpy moves it by -3e-42)
    p = r.precision
    assert p.outcome != STALLED and p.unjudged.get("subnormal intermediates", 0) > 0


def test_torch_differentiable_float16_adam_overflows_its_folded_denominator_and_stalls(catalog):
    """Found by CI: torch's differentiable (and capturable) Adam divides sqrt(v)
    by sqrt(bias_correction2) * step_size, which overflows float16 once
    sqrt(v_hat)/lr passes 65504: the parameter does not move. Declared as the
    precision variant folded_step_size; reported as a declared `stalled`."""
    pytest.importorskip("torch")
    hp = {"lr": 0.001, "beta1": 0.0, "beta2": 0.5, "eps": 1e-08}
    r = _run(catalog, "adam", "torch", "differentiable", "float16", hp, [0.0], [[100.0]])
    assert r.observed.params[0, 0] == 0.0 and not r.failing
    assert r.precision.outcome == STALLED and r.precision.declared and "variant folded_step_size" in r.precision.cause
    forloop = _run(catalog, "adam", "torch", "forloop", "float16", hp, [0.0], [[100.0]])
    assert forloop.observed.params[0, 0] == pytest.approx(-0.001, rel=1e-2) and forloop.precision.outcome == EXACT


@pytest.mark.parametrize("name", ["adam_torch-differentiable-cpu-float16", "adam_torch-differentiable-cpu-float64", "adamw_torch-differentiable-cpu-float16"])
def test_thorough_run_counterexamples_of_torch_differentiable_adam_follow_folded_step_size(catalog, name):
    """A thorough run (profile thorough, seed 3358134322) found three cases where
    torch's differentiable Adam/AdamW followed no declared rule: its folded
    denominator overflows float16, and its bias corrections come from betas
    rounded to float32 (beta ** step with a float32 step tensor). The variant
    folded_step_size now declares both; each shrunk case follows it."""
    pytest.importorskip("torch")
    case = Case.load(Path(__file__).parent / "data" / "precision" / f"{name}.json")
    spec = catalog.get(case.rule)
    r = execute(spec, Cell(case.rule, "torch", case.mode, "cpu", case.dtype), case, InProcessHost("torch"))
    assert not r.failing, r.reason
    assert r.verdict.expected == ("folded_step_size",) and r.precision.declared


def test_mxnet_adamax_has_no_eps_and_gives_nan_where_the_gradient_has_been_zero(catalog):
    """Measured: mx.optimizer.Adamax() on weight [1, 1] with gradient [0, 1] gives
    [nan, 0.998]: no epsilon, 0/0. Declared (variant no_eps), so it passes and
    the precision axis names it nonfinite against the exact rule (eps 1e-8)."""
    from conformance.execution import make_host
    from conformance.registry import worker_python

    python = worker_python("mxnet")
    if python is None:
        pytest.skip("no MXNet environment (conformance setup-worker mxnet)")
    host = make_host("mxnet", "worker", python)
    try:
        case = _case("adamax", "mxnet", "updater", "float64", {"lr": 0.002}, [1.0, 1.0], [[0.0, 1.0]] * 2)
        r = execute(catalog.get("adamax"), Cell("adamax", "mxnet", "updater", "cpu", "float64"), case, host)
    finally:
        host.close()
    assert r.outcome in (CONFORMS, KNOWN) and not r.failing, r.reason
    assert np.isnan(r.observed.params[0, 0]) and r.observed.params[0, 1] == pytest.approx(0.998)
    assert r.precision.outcome == NONFINITE and r.precision.declared


def test_lion_direction_written_as_a_lerp_of_the_momentum_is_undetermined_where_it_cancels(catalog):
    """Lion's c = beta1*m + (1 - beta1)*g is computed by torch-style libraries as
    m.lerp(g, 1 - beta1), whose error scales with |m| (the spec's `increments`):
    with beta1 near 0 and g = 0, c = beta1*m is far below u*|m|, so its sign is
    the rounding's and the element is not judged from that step on."""
    from conformance.tolerance import reference
    from conformance.tolerance import tolerance_for

    spec = catalog.get("lion")
    assert spec.increments == {"c": "m"}
    case = _case("lion", "torch", "forloop", "float64", {"lr": 1e-4, "beta1": 1.1754943508222875e-38, "beta2": 0.99, "weight_decay": 0.0},
                 [0.0], [[1.0], [0.0]])
    ref = reference(spec, case, (), tolerance_for(spec, "float64"))
    assert not ref.undetermined[0].any() and ref.undetermined[1].all()


def test_a_test_on_the_tensors_within_rounding_of_its_threshold_leaves_the_element_undetermined(catalog):
    """LAMB's trust ratio is 1 where norm(p) is 0. With lr 1, a scalar
    parameter's first step lands exactly on 0 in exact arithmetic, and at
    u*|p| or 0 under rounding (Keras float64 gave 0 where the exact rule left
    2e-153: the draft's failing cells). Which branch the next step takes is
    the rounding's, so the element is not judged from then on; the first
    step, before any test, stays judged."""
    from conformance.tolerance import reference
    from conformance.tolerance import tolerance_for

    spec = catalog.get("lamb")
    case = _case("lamb", "tensorflow", "eager", "float64", {**spec.defaults, "lr": 1.0}, 1.0, [0.5, 0.5, 0.3])
    ref = reference(spec, case, (), tolerance_for(spec, "float64"))
    assert ref.values.params[0] == 0.0 and np.isfinite(ref.bound.params[0])
    assert not ref.undetermined[0] and ref.undetermined[1:].all()
    # away from the threshold (lr 0.5: the parameter halves), every step is judged
    calm = reference(spec, _case("lamb", "tensorflow", "eager", "float64", {**spec.defaults, "lr": 0.5}, 1.0, [0.5, 0.5, 0.3]),
                     (), tolerance_for(spec, "float64"))
    assert not calm.undetermined.any()
