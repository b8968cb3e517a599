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
from conformance.compare import Trajectories, compare, reference, tolerance_for
from conformance.dtypes import numpy_dtype


def _case(name: str) -> Case:
    return Case.load(Path(builtin_spec_dir()) / "cases" / name)


def _keras_graph_rmsprop(case: Case, rsqrt: bool) -> Trajectories:
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
    return Trajectories(np.array(ps), {"b": np.array(bs)})


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


def _torch_foreach_centered(case: Case, dtype: str) -> Trajectories:
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
    return Trajectories(np.array(ps), {"mg": np.array(mgs)})


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
