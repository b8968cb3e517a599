"""The rounding model behind the bound: it must cover a rule computed in
another order of operations than the spec writes, and must not cover a
different rule.

The two pinned RMSprop cases (specs/cases/rmsprop_centered_*.json) were
found by CI runs on real frameworks. Here each is evaluated in numpy in the
order the framework uses, rounding every operation to the case dtype, with
no framework involved; the real frameworks run the same cases as fixed cases
of every rmsprop cell.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from conformance.case import Case
from conformance.catalog import builtin_spec_dir
from conformance.compare import compare
from conformance.tolerance import Trajectory, reference, tolerance_for
from conformance.dtypes import numpy_dtype


def _case(name: str) -> Case:
    return Case.load(Path(builtin_spec_dir()) / "cases" / name)


def _keras_graph_rmsprop(case: Case, rsqrt: bool) -> Trajectory:
    """Keras 3 RMSprop.update_step (centered, momentum, float32) as TensorFlow's
    graph optimizer and XLA rewrite it: lr * g / sqrt(d) becomes lr * g * rsqrt(d)."""
    f = np.float32
    hp = case.hyperparameters
    lr, rho, eps, mom = f(hp["lr"]), f(hp["rho"]), f(hp["eps"]), f(hp["momentum"])
    p = case.params.astype(f)
    v, mg, b = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    ps, bs = [], []
    for g in case.grads.astype(f):
        v = rho * v + (f(1) - rho) * (g * g)
        mg = rho * mg + (f(1) - rho) * g
        d = v - mg * mg + eps
        if rsqrt:
            r = (1.0 / np.sqrt(d.astype(np.float64))).astype(f)  # rsqrt, correctly rounded
            inc = lr * g * r
        else:
            inc = lr * g / np.sqrt(d)
        b = mom * b + inc
        p = p - b
        ps.append(p.astype(np.float64))
        bs.append(b.astype(np.float64))
    return Trajectory(np.array(ps), {"b": np.array(bs)})


def test_rsqrt_order_errors_adding_up_over_signed_increments_stay_within_the_bound(catalog):
    spec = catalog.get("rmsprop")
    mode = spec.mode("tensorflow", "function")
    case = replace(_case("rmsprop_centered_signed_sum.json"), hyperparameters={
        **_case("rmsprop_centered_signed_sum.json").hyperparameters, "lr": float(np.float32(0.01)),
    })
    graph = _keras_graph_rmsprop(case, rsqrt=True)
    tol = tolerance_for(spec, "float32")
    full = reference(spec, case, mode.expect, tol, hyperparameter_dtype=mode.hyperparameter_dtype)
    assert compare(graph, full, "float32").ok
    # The increments are off by an ulp or so, in one direction, and p adds
    # them up although they change sign: a model that only pushes operations
    # away from (or toward) zero sees those errors cancel, and its bound is
    # too tight for the order TensorFlow really uses.
    magnitude_only = reference(spec, case, mode.expect, replace(tol, samples=3), hyperparameter_dtype=mode.hyperparameter_dtype)
    assert not compare(graph, magnitude_only, "float32").ok
    # The spec's own order is within both.
    plain = _keras_graph_rmsprop(case, rsqrt=False)
    assert compare(plain, full, "float32").ok


def _torch_foreach_centered(case: Case, dtype: str) -> Trajectory:
    """torch/optim/rmsprop.py _multi_tensor_rmsprop (centered, momentum, L2),
    every operation rounded to `dtype`: grad_avg.lerp_(grad, 1 - alpha)."""
    low = numpy_dtype(dtype)

    def r(x):
        return np.asarray(x, dtype=np.float64).astype(low).astype(np.float64)

    hp = case.hyperparameters
    alpha, lr, eps, mom, wd = hp["rho"], hp["lr"], hp["eps"], hp["momentum"], hp["weight_decay"]
    one_minus = r(1 - alpha)
    p = r(case.params)
    v, mg, b = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    ps, mgs = [], []
    for g in case.grads:
        g = r(g + r(wd * p)) if wd else r(g)
        v = r(r(v * r(alpha)) + r(r(g * g) * one_minus))  # square_avg.mul_(alpha).addcmul_(g, g, 1 - alpha)
        mg = r(mg + r(one_minus * r(g - mg)))  # lerp_
        avg = r(r(np.sqrt(r(v - r(mg * mg)))) + r(eps))  # addcmul(-1).sqrt_().add_(eps)
        b = r(r(b * r(mom)) + r(g / avg))  # buf.mul_(momentum).addcdiv_(grad, avg)
        p = r(p - r(r(lr) * b))
        ps.append(p)
        mgs.append(mg)
    return Trajectory(np.array(ps), {"mg": np.array(mgs)})


def test_a_cancelling_centered_average_in_bfloat16_stays_within_the_bound(catalog):
    spec = catalog.get("rmsprop")
    mode = spec.mode("torch", "foreach")
    case = _case("rmsprop_centered_cancelling_average.json")
    foreach = _torch_foreach_centered(case, "bfloat16")
    tol = tolerance_for(spec, "bfloat16")
    ref = reference(spec, case, mode.expect, tol, hyperparameter_dtype=mode.hyperparameter_dtype)
    assert compare(foreach, ref, "bfloat16").ok


def test_the_bound_still_tells_float32_betas_apart_in_float64(catalog):
    """Wider where rounding can add up, the bound still separates Keras'
    float32 betas in the bias correction (a 6.7e-6 relative step) from exact
    betas on the pinned Adam case in float64, and not in float32, where that
    difference is below the rounding of the case itself."""
    spec = catalog.get("adam")
    for dtype, told in (("float64", True), ("float32", False)):
        case = replace(_case("adam_beta_rounding.json"), dtype=dtype, sparse_rows=None, sparse_values=None)
        tol = tolerance_for(spec, dtype)
        exact = reference(spec, case, ("epsilon_hat",), tol, hyperparameter_dtype="cast")
        rounded = reference(spec, case, ("epsilon_hat", "bias_correction_float32_betas"), tol, hyperparameter_dtype="cast")
        assert compare(rounded.values, exact, dtype).ok is not told
        assert compare(exact.values, rounded, dtype).ok is not told


def _equivalence_cases(catalog):
    rng = np.random.default_rng(1)
    hp = {"rmsprop": {"centered": True, "momentum": 0.5}, "sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
          "adam": {"amsgrad": True, "eps": 1e-6}, "adamw": {"amsgrad": True}}
    for spec in catalog:
        for dtype in ("float64", "float32", "float16", "bfloat16"):
            def r(x):
                return np.asarray(x, dtype=np.float64).astype(numpy_dtype(dtype)).astype(np.float64)

            yield Case(rule=spec.rule, dtype=dtype, params=r(rng.normal(size=(3, 4))), grads=r(rng.normal(size=(6, 3, 4)) * 10), hyperparameters=hp.get(spec.rule, {}))
            if 0 in spec.ranks:  # (Muon is defined for matrices only)
                yield Case(rule=spec.rule, dtype=dtype, params=r(rng.normal()), grads=r(rng.normal(size=(4,))), hyperparameters=hp.get(spec.rule, {}))
    # a subnormal increment in a state computed from the gradient alone (no sample axis)
    yield Case(rule="sgd", dtype="float64", params=np.zeros(2), grads=np.array([[1.0, 1e-309]]), hyperparameters={"momentum": 0.9})
    rows = ((0, 2, 2), (1,), ())
    values = tuple(rng.normal(size=(len(x), 4)) for x in rows)
    grads = np.zeros((3, 3, 4))
    for i, (x, v) in enumerate(zip(rows, values)):
        for row, piece in zip(x, v):
            grads[i, row] += piece
    yield Case(rule="adagrad", dtype="float32", params=rng.normal(size=(3, 4)).astype(np.float32).astype(np.float64),
               grads=grads.astype(np.float32).astype(np.float64), hyperparameters={},
               sparse_rows=rows, sparse_values=tuple(v.astype(np.float32).astype(np.float64) for v in values))


def test_the_batched_noise_estimate_is_the_serial_one(catalog):
    """The rounded runs in one kernel pass (a sample axis) give bit for bit the
    bounds, taints and moving elements of the same samples run one by one
    (the deterministic ones: nearest and the four directed samples), for every
    rule and declared variant set, every dtype, a scalar parameter and sparse rows."""
    compared = 0
    for case in _equivalence_cases(catalog):
        spec = catalog.get(case.rule)
        seen = set()
        for (fw, mode_name), mode in spec.modes.items():
            key = (mode.expect, mode.hyperparameter_dtype)
            if key in seen or (mode.gradients == "sparse") != (case.sparse_rows is not None and mode.gradients == "sparse"):
                continue
            seen.add(key)
            tol = replace(tolerance_for(spec, case.dtype), samples=5)
            a = reference(spec, case, mode.expect, tol, hyperparameter_dtype=mode.hyperparameter_dtype)
            b = reference(spec, case, mode.expect, tol, hyperparameter_dtype=mode.hyperparameter_dtype, batched=False)
            where = f"{case.rule} {fw}/{mode_name} {case.dtype} {case.shape}"
            np.testing.assert_array_equal(a.bound.params, b.bound.params, err_msg=where)
            for k in a.bound.state:
                np.testing.assert_array_equal(a.bound.state[k], b.bound.state[k], err_msg=f"{where} {k}")
            np.testing.assert_array_equal(a.taint, b.taint, err_msg=where)
            np.testing.assert_array_equal(a.moves, b.moves, err_msg=where)
            compared += 1
    assert compared > 200


def test_an_intermediate_of_another_shape_taints_the_whole_parameter(catalog):
    """Muon's Gram matrix X X^T (rows x rows) feeds every element: where it goes
    below the normal range, every element is unjudged from then on (no
    broadcasting error, and no element judged on a subnormal it depended on)."""
    from conformance.tolerance import Rounding, SampledRounding

    for model in (Rounding("float16"), SampledRounding("float16", 3, np.random.default_rng(0))):
        model.bind((2, 1))
        lead = (3,) if model.samples else ()
        model(np.full(lead + (2, 2), 1e-6))  # subnormal in float16
        assert model.taint.shape == lead + (2, 1) and model.taint.all()
        model.taint = None
        model(np.full(lead + (2, 1), 1e-6) * np.array([[1.0], [1e6]]))  # the parameter's own shape: per element
        assert model.taint.reshape(-1, 2)[:, 0].all() and not model.taint.reshape(-1, 2)[:, 1].any()
