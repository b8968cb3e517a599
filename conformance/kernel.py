"""The reference kernel: a spec's equations evaluated step by step on numpy.

It runs the canonical rule or any named variants over the same
dtype-rounded inputs the frameworks get, in float64 by default, and returns
the parameters and every state slot after every step. The same equations
can also be evaluated in a lower dtype (float32, float16, bfloat16), which
the tolerance uses to estimate how much rounding alone moves a result.

Numerics: all hyperparameters become numpy scalars of the compute dtype so
that numpy (not Python) semantics apply everywhere (`1/0` is inf, not an
exception) and nothing silently promotes a float16 run to float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .case import Case, SliceTerms
from .dtypes import numpy_dtype
from .expr import CASE_DTYPE, ROUNDING, rounded_twin
from .spec import Spec


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Parameters and state slots after every step: arrays of shape (steps, *shape)
    (steps, samples, *shape for a sampled rounding model). The one trajectory
    type of the harness: the kernel's, the reference's and a framework's."""

    params: np.ndarray
    state: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "trajectory": _tolist(self.params),
            "state": {name: _tolist(values) for name, values in self.state.items()},
        }


def _tolist(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def run(
    spec: Spec,
    hyperparameters: dict[str, Any],
    params: np.ndarray,
    grads: Sequence[np.ndarray] | np.ndarray,
    *,
    variants: Sequence[str] = (),
    lr_schedule: Sequence[float] | None = None,
    sparse_rows: Sequence[Sequence[int]] | None = None,
    slice_terms: SliceTerms | None = None,
    compute_dtype: str = "float64",
    rounding: Any = None,
    case_dtype: str | None = None,
    watch: Callable[[int, str, np.ndarray], None] | None = None,
) -> Trajectory:
    """Run `spec` (with `variants` applied) from `params` over one gradient per step.

    `hyperparameters` are canonical names over the spec defaults. The inputs
    are taken as given (round them to the case dtype first: `run_case` does).
    With `sparse_rows`, rows not listed for a step get a zero gradient; under
    lazy semantics they also keep their parameters and state (a row listed
    twice is touched once). Equations read `slice_sq`: g*g, or, with
    `slice_terms` (a case that lists a row twice, `Case.slice_terms`), the sum
    of the squares of the step's slices; and `slice_abs`: |g|, or the sum of
    the slices' absolute values. With `rounding`, those terms also
    perturb the repeated rows' gradient by a unit roundoff of the sum of
    |slices| (`rounding.gradient`) and taint elements where one slice's
    square leaves the dtype's range (`rounding.taint_below`).

    `rounding` (a `conformance.tolerance.RoundingModel`, used by the noise
    estimate) is applied to the result of every array operation and to the
    initial state: a model of a framework computing the same equations in a
    lower precision. A model with `samples` S runs S such runs at once: the
    parameters and state carry a leading sample axis, and the trajectory has
    shape (steps, S, *shape).

    `watch(step, target, value)` is called after every equation (the
    precision axis uses it to name the first equation that turns non-finite).
    """
    # "longdouble" (x87 extended on x86-64: 64-bit significand, exponents to
    # 1e-4951) is what the tolerance uses for its reference: intermediates that
    # a float64 evaluation would take through the subnormal range stay exact.
    dt = np.dtype(np.longdouble) if compute_dtype == "longdouble" else numpy_dtype(compute_dtype)
    scalar = dt.type
    hp = spec.resolve(hyperparameters)
    env_base = {name: (v if isinstance(v, bool) else scalar(v)) for name, v in hp.items()}
    if case_dtype is not None:
        # in_dtype(x) in a spec: x rounded to the case dtype, kept in the compute dtype
        low = numpy_dtype(case_dtype).type
        env_base[CASE_DTYPE] = lambda x: type(x)(low(x)) if not isinstance(x, np.ndarray) else x.astype(low).astype(x.dtype)
    equations = spec.equations(tuple(variants))
    reads_abs = any("slice_abs" in eq.expr.names for eq in equations)  # (only Keras' Adamax: no rounded op for the others)
    if rounding is not None:
        equations = tuple((eq.target, rounded_twin(eq.expr.source)) for eq in equations)
    else:
        equations = tuple((eq.target, eq.expr) for eq in equations)
    lazy = spec.sparse_semantics(tuple(variants)) == "lazy"
    grads = np.asarray(grads, dtype=np.float64)
    steps = grads.shape[0]
    if lr_schedule is not None and len(lr_schedule) != steps:
        raise ValueError(f"{len(lr_schedule)} learning rates for {steps} steps")
    if sparse_rows is not None and len(sparse_rows) != steps:
        raise ValueError(f"{len(sparse_rows)} row sets for {steps} steps")

    p = np.asarray(params, dtype=np.float64).astype(dt)
    out_shape = p.shape
    if p.ndim == 0:
        # numpy turns 0-d arrays into scalars after every operation; a
        # one-element vector keeps array semantics (and the rounding model).
        p = p.reshape(1)
        grads = grads.reshape(steps, 1)
    shape = p.shape
    # the shape of every state and parameter array: with a sampled rounding
    # model, one per sample (the gradients broadcast against it)
    samples = rounding.samples if rounding is not None else None
    full = shape if samples is None else (samples,) + shape
    if rounding is not None:
        rounding.bind(shape)
    init_env = dict(env_base, p=p)
    state = {
        name: np.array(np.broadcast_to(expr(init_env), full), dtype=dt)
        for name, expr in spec.initial_state(tuple(variants)).items()
    }
    if samples is not None:
        p = np.array(np.broadcast_to(p, full))
    if rounding is not None:
        init_env[ROUNDING] = rounding
        state = {name: _shaped(rounding(value), full, dt) for name, value in state.items()}
    out_p = np.empty((steps,) + full, dtype=dt)
    out_state = {name: np.empty((steps,) + full, dtype=dt) for name in state}

    with np.errstate(all="ignore"):
        for i in range(steps):
            g = grads[i].astype(dt, copy=False)
            touched = None
            if sparse_rows is not None:
                touched = np.zeros(shape[0], dtype=bool)
                touched[list(sparse_rows[i])] = True
                g = np.where(_rows(touched, g.ndim), g, dt.type(0))
            terms = slice_terms
            if rounding is not None and terms is not None and terms.repeated_abs is not None:
                g = rounding.gradient(g, terms.repeated_abs[i].reshape(shape))
            env = dict(env_base, **state)
            env.update(p=p, g=g, t=i + 1)
            sq = terms.squares[i].reshape(shape).astype(dt) if terms is not None else g * g
            env["slice_sq"] = rounding(sq) if rounding is not None else sq
            if reads_abs:
                ab = terms.abs_sums[i].reshape(shape).astype(dt) if terms is not None and terms.abs_sums is not None else np.abs(g)
                env["slice_abs"] = rounding(ab) if rounding is not None else ab
            if rounding is not None and terms is not None and terms.smallest_squares is not None:
                rounding.taint_below(terms.smallest_squares[i].reshape(shape))
            if rounding is not None:
                env[ROUNDING] = rounding
            if lr_schedule is not None:
                env["lr"] = scalar(lr_schedule[i])
            if rounding is None:
                for target, expr in equations:
                    env[target] = expr(env)
                    if watch is not None:
                        watch(i + 1, target, np.asarray(env[target]))
            else:
                for target, expr in equations:
                    value = expr(env)
                    if target == "p" or target in state:
                        value = rounding.carry(np.asarray(value, dtype=dt), env[target])
                    elif target in spec.increments:  # (written as an increment of another value: lerp)
                        value = rounding.carry(np.asarray(value, dtype=dt), env[spec.increments[target]])
                    env[target] = value
                    if watch is not None:
                        watch(i + 1, target, np.asarray(value))
            new_p = _shaped(env["p"], full, dt)
            new_state = {name: _shaped(env[name], full, dt) for name in state}
            if lazy and touched is not None:
                keep = _rows(touched, len(shape))
                new_p = np.where(keep, new_p, p)
                new_state = {name: np.where(keep, new_state[name], state[name]) for name in state}
            p, state = new_p, new_state
            if rounding is not None:
                rounding.end_step()
            out_p[i] = p
            for name in state:
                out_state[name][i] = state[name]
    if out_shape != shape:
        lead = (steps,) if samples is None else (steps, samples)
        out_p = out_p.reshape(lead + out_shape)
        out_state = {name: v.reshape(lead + out_shape) for name, v in out_state.items()}
    return Trajectory(out_p, out_state)


def run_case(spec: Spec, case: Case, variants: Sequence[str] | None = None, compute_dtype: str = "float64") -> Trajectory:
    """Run a case (its inputs are already rounded to `case.dtype`)."""
    return run(
        spec,
        case.hyperparameters,
        case.params,
        case.grads,
        variants=case.variant if variants is None else variants,
        lr_schedule=case.lr_schedule,
        sparse_rows=case.sparse_rows,
        slice_terms=case.slice_terms,
        compute_dtype=compute_dtype,
        case_dtype=case.dtype,
    )


def _rows(mask: np.ndarray, ndim: int) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def _shaped(value: Any, shape: tuple[int, ...], dt: np.dtype) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != shape:
        a = np.broadcast_to(a, shape)
    return a.astype(dt, copy=False)
