"""The tolerance model: how far rounding alone moves each element of a rule.

A fixed rtol either hides real divergences or cries wolf on ill-conditioned
cases (tiny eps, v near zero, a centered variance near zero), so the bound is
error-aware. For every element of every step and state slot it is

    bound = max(noise_factor * noise, floor_ulps * ulp(reference))

where `noise` is how far rounding alone moves that element: the largest
distance from the exact reference (long double) among a few runs of the same
equations under a model of low-precision arithmetic (`Rounding`: every array
operation rounded to the case dtype, once to nearest, then pushed one unit
roundoff away from and toward zero, toward +inf and -inf, and at random).
The rounded runs are one kernel pass with a leading sample axis
(`SampledRounding`), so more samples cost little. Where even a rounded run
leaves the finite range (overflow, 0/0) or goes through subnormals the
element is not judged, and `Reference.taint` says where.

`conformance.compare` judges a trajectory against a `Reference`;
`conformance.precision` uses the same model without the framework's declared
precision.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from .case import Case
from .dtypes import PRECISION, numpy_dtype, ulp, unit_roundoff
from .expr import SampleScalar
from .kernel import Trajectory, run, run_case
from .spec import Spec


class RoundingModel(Protocol):
    """What the kernel asks of a rounding model (`Rounding`, `SampledRounding`)."""

    #: None: one run; an int S: S runs at once, along a leading sample axis
    samples: int | None

    def bind(self, shape: tuple[int, ...]) -> None: ...
    def __call__(self, x: np.ndarray) -> np.ndarray: ...
    def operand(self, x: Any) -> Any: ...
    def scalar(self, x: Any) -> Any: ...
    def carry(self, new: np.ndarray, old: Any) -> np.ndarray: ...
    def gradient(self, g: np.ndarray, repeated_abs: np.ndarray) -> np.ndarray: ...
    def taint_below(self, values: np.ndarray) -> None: ...
    def edge_argument(self, kind: str, x: np.ndarray) -> None: ...
    def reduction(self, total: np.ndarray, n: int) -> np.ndarray: ...
    def narrow(self, x: np.ndarray, dtype: str) -> np.ndarray: ...
    def end_step(self) -> None: ...


@dataclass(frozen=True)
class Tolerance:
    noise_factor: float
    floor_ulps: float
    samples: int = 6  # rounded runs: nearest, away from / toward zero, toward +inf / -inf, random jitter

    def merged(self, override: Any) -> "Tolerance":
        """This tolerance with a spec's `tolerance.<dtype>` fields applied."""
        if override is None:
            return self
        return Tolerance(
            noise_factor=override.noise_factor if override.noise_factor is not None else self.noise_factor,
            floor_ulps=override.floor_ulps if override.floor_ulps is not None else self.floor_ulps,
            samples=self.samples,
        )


#: Defaults per dtype. The noise estimate comes from a few random samples of
#: the rounding model, and frameworks order and fuse operations differently
#: from the spec's equations, so the bound allows several times the sampled
#: noise; the ulp floor covers results that rounding cannot move at all in
#: the model (exact operations) but a framework may still compute in another
#: order.
DEFAULT_TOLERANCE: dict[str, Tolerance] = {
    "float64": Tolerance(noise_factor=8.0, floor_ulps=8.0),
    "float32": Tolerance(noise_factor=8.0, floor_ulps=8.0),
    "float16": Tolerance(noise_factor=8.0, floor_ulps=4.0),
    "bfloat16": Tolerance(noise_factor=8.0, floor_ulps=4.0),
}


def tolerance_for(spec: Spec, dtype: str) -> Tolerance:
    return DEFAULT_TOLERANCE[dtype].merged(spec.tolerance.get(dtype))


@dataclass(frozen=True, eq=False)
class Reference:
    """A kernel run of some variants and the per-element bound around it."""

    variants: tuple[str, ...]
    values: Trajectory
    bound: Trajectory
    #: (steps, *shape): elements whose computation went below the dtype's
    #: normal range in a rounded run (not judged from then on; their bound is
    #: inf). An infinite bound elsewhere: a rounded run was not finite there.
    taint: np.ndarray | None = None
    #: (shape of p): parameter elements that every rounded run moves at some
    #: step (the dtype's own arithmetic cannot keep them still)
    moves: np.ndarray | None = None
    #: (steps, *shape): elements where a square root's argument was within
    #: the bound of 0 in the rounded runs (`v - g_avg**2` cancelling): the
    #: dtype does not determine whether it is a number or NaN (not judged
    #: from then on; their bound is inf)
    undetermined: np.ndarray | None = None


class Rounding:
    """The rounding model applied by the kernel to every operation.

    - `__call__` jitters an array result by up to one unit roundoff (when
      there is a random generator) and rounds it to the case dtype, with
      its subnormals, underflow to zero and overflow to inf.
    - `scalar` does the same to arithmetic on hyperparameters
      (`1 - beta2 ** t`) in the scalar dtype, float64 (frameworks do it in
      Python floats), where cancellation can cost many ulps.
    - `carry` models the other way frameworks write the same update: as an
      increment of the old value (`m + (1 - beta1) * (g - m)` for
      `beta1 * m + (1 - beta1) * g`, torch/optim/_functional.py
      sparse_adam), whose rounding error scales with the old value, not the
      new one: a new state or parameter value gets a jitter of up to
      u * |old value| as well.
    - `operand` rounds a scalar (a hyperparameter, or arithmetic on them)
      where it meets an array to the precision the framework passes it in,
      when a mode declares one (`hyperparameter_dtype`: Keras holds lr in
      float32; torch's foreach kernels take a Scalar in the tensor's dtype).
      With `cast` (Keras: `ops.power(ops.cast(self.beta_2, variable.dtype), t)`)
      scalar arithmetic happens in the case dtype as well. Where a framework
      rounds a hyperparameter itself before arithmetic, that is not noise but
      part of the rule it computes: the spec says so with `in_dtype(beta2)`
      in a variant, which the reference evaluates exactly.
    - `gradient` perturbs the rows a sparse gradient lists twice by a unit
      roundoff of the sum of their slices' magnitudes: a framework may carry
      the slices through linear operations and add them up last, so with
      cancelling slices its result is only that close to the summed one.
    - `taint` marks the elements where an operation gave a nonzero result
      below the dtype's normal range. There the dtype keeps only a few
      significant bits (or none), and which intermediate underflows depends
      on the order of operations (`lr * m / eps` or `lr * (m / eps)`), so
      the result of the rule is not determined by the dtype: such elements
      are not judged from that step on, and the count is reported.
    """

    samples: int | None = None

    def __init__(self, dtype: str, rng: Any = None, hyperparameter_dtype: str = "float64"):
        if hyperparameter_dtype == "float32" and PRECISION[dtype][0] < PRECISION["float32"][0]:
            # float32 hyperparameters are cast to a narrower parameter dtype
            # where they meet it (TF1 training ops, MXNet's float16 kernels)
            hyperparameter_dtype = "cast"
        hp_dtype = dtype if hyperparameter_dtype in ("tensor", "cast") else hyperparameter_dtype
        scalar_dtype = {"float32": "float32", "cast": dtype}.get(hyperparameter_dtype, "float64")
        self.hp_low = numpy_dtype(hp_dtype)
        self.low = numpy_dtype(dtype)
        self.u = unit_roundoff(dtype)
        self.min_normal = 2.0 ** PRECISION[dtype][1]
        self.scalar_low = numpy_dtype(scalar_dtype)
        self.scalar_u = unit_roundoff(scalar_dtype)
        self.rng = rng
        self.taint: np.ndarray | None = None
        self.taint_steps: list[np.ndarray | None] = []
        #: (step, function, argument) of every square root and sign of an
        #: array, in order: the runs together tell whether rounding can take
        #: one across 0 (NaN from sqrt, the other sign from sign)
        self.edge_args: list[tuple[int, str, np.ndarray]] = []

    # -- where the jitter comes from (one run: a generator, a direction, or none)

    def bind(self, shape: tuple[int, ...]) -> None:
        """The kernel's parameter shape (a sampled model needs it for its sample axis)."""
        self._taint_shape: tuple[int, ...] | None = shape

    def _add_taint(self, tiny: np.ndarray) -> None:
        """Mark parameter elements whose computation went below the normal range.
        An intermediate of another shape than the parameter's (a Gram matrix
        X X^T of Muon's iteration) feeds every element: it taints them all."""
        target = getattr(self, "_taint_shape", None)
        if target is not None and tiny.shape != target:
            try:
                fits = np.broadcast_shapes(tiny.shape, target) == target
            except ValueError:
                fits = False
            if not fits:
                lead = 1 if self.samples and tiny.ndim == len(target) else 0
                per = np.any(tiny, axis=tuple(range(lead, tiny.ndim)), keepdims=True)
                tiny = np.broadcast_to(per.reshape(per.shape[:lead] + (1,) * (len(target) - lead)), target)
        self.taint = tiny.copy() if self.taint is None else (self.taint | tiny)

    def _array_r(self, x: np.ndarray) -> Any:
        """Relative jitter (in units of u) of an array result, or None."""
        if self.rng is None:
            return None
        r = self.rng.uniform(-1.0, 1.0, x.shape)
        if getattr(self.rng, "signed", False):
            r = r * np.sign(x)  # toward +inf / -inf, whatever the sign of x
        return r

    def _plain_r(self, shape: tuple[int, ...] | None) -> Any:
        """Jitter of a scalar (shape None), an increment or a gradient: unsigned."""
        if self.rng is None:
            return None
        return self.rng.uniform(-1.0, 1.0) if shape is None else self.rng.uniform(-1.0, 1.0, shape)

    # -- the model

    def __call__(self, x: np.ndarray) -> np.ndarray:
        r = self._array_r(x)
        if r is not None:
            # (the factor in x's own precision: 1 + 2**-53 is 1 in float64)
            x = x * (1.0 + self.u * np.asarray(r, dtype=x.dtype))
        # (the kernel evaluates under np.errstate(all="ignore"))
        a = np.abs(x)
        if (a < self.min_normal).any():
            tiny = (a < self.min_normal) & (x != 0)
            if tiny.any():
                self._add_taint(tiny)
        return x.astype(self.low).astype(x.dtype)

    def operand(self, x: Any) -> Any:
        """A scalar operand of an array operation, as the framework passes it (`hyperparameter_dtype`)."""
        if isinstance(x, np.ndarray):
            return x.astype(self.hp_low).astype(x.dtype)
        return type(x)(self.hp_low.type(x))

    def scalar(self, x: Any) -> Any:
        r = self._plain_r(None)
        if r is not None:
            x = x * (1.0 + self.scalar_u * np.asarray(r, dtype=np.asarray(x).dtype))
        if isinstance(x, np.ndarray):
            return x.astype(self.scalar_low).astype(x.dtype)
        return type(x)(self.scalar_low.type(x))

    def carry(self, new: np.ndarray, old: Any) -> np.ndarray:
        old = np.asarray(old)
        # Written as an increment, the update passes through new - old:
        # where that is below the normal range, a framework that flushes
        # subnormals to zero (TensorFlow on the CPU) keeps the old value.
        step = np.abs(new - old)
        tiny = (step != 0) & (step < self.min_normal)
        if tiny.any():
            # (a new value computed from the gradient alone has no sample axis: the old one has)
            tiny = np.broadcast_to(tiny, np.broadcast_shapes(new.shape, old.shape))
            self.taint = tiny.copy() if self.taint is None else (self.taint | tiny)
        r = self._plain_r(np.broadcast_shapes(new.shape, old.shape))
        if r is None:
            return new
        jitter = self.u * np.abs(old) * r
        jitter = np.where(np.isfinite(jitter), jitter, 0.0)
        return (new + jitter).astype(self.low).astype(new.dtype)

    def gradient(self, g: np.ndarray, repeated_abs: np.ndarray) -> np.ndarray:
        """A step's gradient where rows are listed twice: known only up to a unit
        roundoff of the sum of |slices| (a framework may divide, scale and sum
        the slices in any order: Keras' sparse divide is per slice)."""
        if not np.any(repeated_abs):
            return g
        r = self._plain_r(g.shape)
        if r is None:
            return g
        return g + (self.u * repeated_abs * r).astype(g.dtype)

    def taint_below(self, values: np.ndarray) -> None:
        """Taint the elements where a nonzero intermediate the equations do not
        show (one slice's square) is below the normal range."""
        tiny = values < self.min_normal
        if tiny.any():
            self.taint = tiny.copy() if self.taint is None else (self.taint | tiny)

    def reduction(self, total: np.ndarray, n: int) -> np.ndarray:
        """A sum of `n` terms of one sign (squares), computed exactly, rounded as a
        pairwise summation is: once per level of its tree, ceil(log2 n) + 1 times
        (a directed run pushes every level the same way; random jitter adds up)."""
        for _ in range(int(np.ceil(np.log2(max(n, 1)))) + 1):
            total = self(total)
        return total

    def narrow(self, x: np.ndarray, dtype: str) -> np.ndarray:
        """An operation the framework computes in a dtype narrower than the case's
        (`bfloat16(x)` in a spec: torch's Newton-Schulz iteration): jittered by
        that dtype's unit roundoff as `__call__` jitters by the case dtype's,
        then rounded to it (held in x's dtype)."""
        r = self._array_r(x)
        if r is not None:
            x = x * (1.0 + unit_roundoff(dtype) * np.asarray(r, dtype=x.dtype))
        return x.astype(numpy_dtype(dtype)).astype(x.dtype)

    def edge_argument(self, kind: str, x: np.ndarray) -> None:
        """Record the argument of a square root or sign, or the difference of a
        comparison of tensors (a `where` test: kind "sign"); see `undetermined_edges`."""
        self.edge_args.append((len(self.taint_steps), kind, x))

    def end_step(self) -> None:
        self.taint_steps.append(self.taint)


class _Directed:
    """Stands in for the random generator of `Rounding`: every draw is
    `direction`, so every operation is pushed one unit roundoff the same way:
    away from zero (1) or toward it (-1), or, when `signed`, toward +inf (1)
    or -inf (-1) whatever the sign of the result."""

    def __init__(self, direction: float, signed: bool = False):
        self.direction = direction
        self.signed = signed

    def uniform(self, low: float, high: float, size: Any = None) -> Any:
        return self.direction if size is None else np.full(size, self.direction)


# Sample 0 rounds to nearest. 1 and 2 push every operation one unit roundoff
# away from zero, then toward zero: a relative bias that accumulates through
# products and cancellation (m + (g - m)(1 - beta1) with a small beta1), which
# random jitter underestimates. 3 and 4 push every operation toward +inf, then
# -inf (directed rounding, as in CESTAC-style estimates): the bias that
# accumulates in a sum of increments of either sign (p -= lr * g / sqrt(v)
# over steps whose gradients change sign), where pushing away from zero
# cancels out. Both push a result that is exact in the spec's order by an ulp,
# as a framework that computes it in another order may (x / sqrt(y) as
# x * rsqrt(y): TensorFlow's grappler and XLA). The rest jitter at random.
# (Scalars, increments and repeated rows' gradients take the direction
# without the sign, in both signed samples.)
_DIRECTED = (_Directed(1.0), _Directed(-1.0), _Directed(1.0, signed=True), _Directed(-1.0, signed=True))


class SampledRounding(Rounding):
    """`samples` runs of the rounding model at once, along a leading axis:
    sample i behaves exactly as `Rounding` with sample i's jitter (nearest,
    the four directed ones of `_DIRECTED`, then random), so one kernel pass
    costs about what one run did. Scalar arithmetic becomes a `SampleScalar`
    (one value per sample); arrays carry the sample axis first."""

    def __init__(self, dtype: str, samples: int, rng: np.random.Generator, hyperparameter_dtype: str = "float64"):
        super().__init__(dtype, None, hyperparameter_dtype)
        self.samples = samples
        self.rng = rng
        unsigned = np.zeros(samples)
        signed = np.zeros(samples)
        self._random = np.zeros(samples, dtype=bool)
        for i in range(1, samples):
            if i <= len(_DIRECTED):
                d = _DIRECTED[i - 1]
                (signed if d.signed else unsigned)[i] = d.direction
            else:
                self._random[i] = True
        self._unsigned, self._signed = unsigned, signed
        self._n_random = int(self._random.sum())
        self.bind(())

    @property
    def full_ndim(self) -> int:
        """The dimensions of an array with the sample axis (taint masks have them, or fewer)."""
        return self._ndim

    def bind(self, shape: tuple[int, ...]) -> None:
        self._taint_shape = (self.samples,) + tuple(shape)
        self._ndim = len(shape) + 1
        self._lead = (self.samples,) + (1,) * len(shape)
        self._plain_col = (self._unsigned + self._signed).reshape(self._lead)
        self._by_dtype: dict[np.dtype, tuple[np.ndarray, np.ndarray]] = {}

    def _noise(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """Uniform jitter in the random samples' rows of a (samples, ...) shape, 0 elsewhere."""
        if not self._n_random:
            return None
        out = np.zeros(shape)
        out[self._random] = self.rng.uniform(-1.0, 1.0, (self._n_random,) + tuple(shape[1:]))
        return out

    def _full(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        # an array without the sample axis (a gradient, or arithmetic on it
        # alone) gets one: each sample rounds it its own way
        if len(shape) == self._ndim:
            return shape
        return np.broadcast_shapes(self._lead, shape)

    def _plain_r(self, shape: tuple[int, ...] | None) -> Any:
        noise = self._noise(self._lead if shape is None else self._full(shape))
        return self._plain_col if noise is None else self._plain_col + noise

    def _factors(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """The columns 1 + u*d and u*s in the compute dtype (a factor in a wider
        dtype would silently widen the whole computation)."""
        f = self._by_dtype.get(dtype)
        if f is None:
            f = self._by_dtype[dtype] = (
                (1 + self._unsigned.astype(dtype) * dtype.type(self.u)).reshape(self._lead),
                (self._signed.astype(dtype) * dtype.type(self.u)).reshape(self._lead),
            )
        return f

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # Rounding.__call__ (with _array_r's jitter) in fewer array operations (the hot
        # loop of every judgement): the factor 1 + u*(d + s*sign(x)) from
        # precomputed columns, the random rows' jitter added in place.
        fu, fs = self._factors(x.dtype)
        factor = fu + fs * np.sign(x)
        if self._n_random:
            if x.ndim != self._ndim:
                factor = np.broadcast_to(factor, self._full(x.shape)).copy()
            factor[self._random] += self.rng.uniform(-self.u, self.u, (self._n_random,) + factor.shape[1:])
        y = x * factor
        small = np.abs(y) < self.min_normal
        if small.any():
            tiny = small & (y != 0)
            if tiny.any():
                self._add_taint(tiny)
        return y.astype(self.low).astype(y.dtype)

    def narrow(self, x: np.ndarray, dtype: str) -> np.ndarray:
        # Rounding.narrow with each sample's jitter (as __call__, at that dtype's unit roundoff)
        u = x.dtype.type(unit_roundoff(dtype))
        factor = 1 + (self._unsigned.astype(x.dtype) * u).reshape(self._lead) + (self._signed.astype(x.dtype) * u).reshape(self._lead) * np.sign(x)
        if self._n_random:
            factor = np.broadcast_to(factor, self._full(x.shape)).copy()
            factor[self._random] += self.rng.uniform(-float(u), float(u), (self._n_random,) + factor.shape[1:])
        return (x * factor).astype(numpy_dtype(dtype)).astype(x.dtype)

    def scalar(self, x: Any) -> Any:
        # Rounding.scalar with _plain_r: one factor per sample, in x's dtype
        dtype = np.asarray(x).dtype
        key = ("scalar", dtype)
        col = self._by_dtype.get(key)
        if col is None:
            col = self._by_dtype[key] = (1 + (self._unsigned + self._signed).astype(dtype) * dtype.type(self.scalar_u)).reshape(self._lead)
        factor = col
        if self._n_random:
            factor = col.copy()
            factor[self._random] += self.rng.uniform(-self.scalar_u, self.scalar_u, (self._n_random,) + col.shape[1:])
        out = x * factor
        if out.dtype != self.scalar_low:
            out = out.astype(self.scalar_low).astype(dtype)
        return out.view(SampleScalar)

    def operand(self, x: Any) -> Any:
        if isinstance(x, np.ndarray) and x.dtype == self.hp_low:
            return x  # (already in the framework's hyperparameter precision)
        out = super().operand(x)
        return out.view(SampleScalar) if isinstance(x, SampleScalar) else out


def reference(
    spec: Spec,
    case: Case,
    variants: Sequence[str],
    tol: Tolerance,
    seed: int = 0,
    hyperparameter_dtype: str = "float64",
    batched: bool = True,
) -> Reference:
    """The reference run of `variants` and its bound, both float64.

    The reference itself is computed in long double where the platform has
    it (see `conformance.kernel.run`), and so are the rounded runs of a
    float64 case (float64 for narrower dtypes), whose every operation is then
    rounded to the case dtype.
    The `tol.samples` rounded runs are one kernel pass (`SampledRounding`);
    `batched=False` runs them one after another (the same model; the random
    sample draws its jitter in another order).
    """
    variants = tuple(variants)
    exact = run_case(spec, case, variants, compute_dtype="longdouble")
    rng = np.random.default_rng(seed)
    n = max(tol.samples, 1)
    with np.errstate(all="ignore"):
        if batched:
            rounding = SampledRounding(case.dtype, n, rng, hyperparameter_dtype)
            rounded = run_case_rounded(spec, case, variants, rounding)
            runs = [(rounded.params, rounded.state, rounding.taint_steps, rounding.full_ndim)]
            edges = [(step, kind, x) for step, kind, x in rounding.edge_args if x.ndim == rounding.full_ndim]
        else:
            runs, args = [], []
            for i in range(n):
                jitter = None if i == 0 else _DIRECTED[i - 1] if i <= len(_DIRECTED) else rng
                rounding = Rounding(case.dtype, jitter, hyperparameter_dtype)
                rounded = run_case_rounded(spec, case, variants, rounding)
                runs.append((rounded.params[:, None], {k: v[:, None] for k, v in rounded.state.items()}, rounding.taint_steps, None))
                args.append(rounding.edge_args)
            edges = [(calls[0][0], calls[0][1], np.stack(np.broadcast_arrays(*(x for *_, x in calls)))) for calls in zip(*args)]
        taint = np.zeros(exact.params.shape, dtype=bool)
        p0 = np.asarray(case.params, dtype=np.float64)
        moves = np.ones(p0.shape, dtype=bool)
        noise_p = np.zeros(exact.params.shape)
        noise_s = {k: np.zeros(v.shape) for k, v in exact.state.items()}
        for params, state, taint_steps, full_ndim in runs:
            # params: (steps, samples, *shape)
            moves &= np.all(np.any(params != p0, axis=0), axis=0)
            noise_p = _worse(noise_p, exact.params, params)
            for k in noise_s:
                noise_s[k] = _worse(noise_s[k], exact.state[k], state[k])
            for step, mask in enumerate(taint_steps):
                if mask is not None:
                    if mask.ndim == full_ndim:  # (samples, *shape): any sample
                        mask = mask.any(axis=0)
                    # (a scalar parameter runs as a one-element vector in the kernel)
                    m = mask.reshape(taint.shape[1:]) if mask.size == taint[step].size else np.broadcast_to(mask, taint.shape[1:])
                    taint[step] |= m
        params = exact.params.astype(np.float64)
        state = {k: v.astype(np.float64) for k, v in exact.state.items()}
        bound_p = _bound(params, noise_p, tol, case.dtype)
        bound_s = {k: _bound(state[k], noise_s[k], tol, case.dtype) for k in noise_s}
        # An element whose computation left the dtype's normal range (in any
        # slot: the parameter feeds the state through weight decay, the state
        # feeds the parameter) is not judged in any slot from then on.
        subnormal = np.logical_or.accumulate(taint, axis=0)
        undetermined = undetermined_edges(edges, taint.shape, tol)
        taint |= undetermined
        for b in (bound_p, *bound_s.values()):
            taint |= ~np.isfinite(b)
        taint = np.logical_or.accumulate(taint, axis=0)
        bound_p = np.where(taint, np.inf, bound_p)
        bound_s = {k: np.where(taint, np.inf, b) for k, b in bound_s.items()}
    return Reference(variants, Trajectory(params, state), Trajectory(bound_p, bound_s), subnormal, moves,
                     np.logical_or.accumulate(undetermined, axis=0))


class SharedReferences:
    """References by (spec, case content, variants, tolerance, hyperparameter
    precision), the last `size` of them: the cells that draw the same case
    (a seed draws the same cases for the modes of a framework whose
    hypothesis strategies agree: torch's forloop, foreach, fused and
    differentiable; the two sides of a cross cell) judge it against one
    computation. A reference is a pure function of these (its rounded runs
    are seeded), so sharing it changes no verdict."""

    def __init__(self, size: int = 2048):
        self.size = size
        self._refs: "OrderedDict[tuple, tuple[Spec, Reference]]" = OrderedDict()

    def __call__(self, spec: Spec, case: Case, variants: Sequence[str], tol: Tolerance, hyperparameter_dtype: str = "float64") -> Reference:
        key = (id(spec), case.content_digest, tuple(variants), tol, hyperparameter_dtype)
        hit = self._refs.get(key)
        if hit is not None and hit[0] is spec:
            self._refs.move_to_end(key)
            return hit[1]
        ref = reference(spec, case, tuple(variants), tol, hyperparameter_dtype=hyperparameter_dtype)
        self._refs[key] = (spec, ref)  # (holding the spec keeps its id from being reused while the entry lives)
        if len(self._refs) > self.size:
            self._refs.popitem(last=False)
        return ref


#: The process's shared references (runner and cross cells).
shared_reference = SharedReferences()


def undetermined_edges(edges: list[tuple[int, str, np.ndarray]], shape: tuple[int, ...], tol: Tolerance) -> np.ndarray:
    """(steps, *shape): where the argument of a square root or a sign has lost
    its significant digits to a cancellation (`v - g_avg**2` of a centered
    RMSprop, Lion's `beta1*m + (1 - beta1)*g`), or a test on the tensors
    (LAMB's `norm(p) > 0`, a sign of the difference) is within rounding of
    its threshold: across the rounded runs (axis
    0 of each) it spreads by more than `noise_factor` times its smallest
    magnitude, or some run takes it to 0 or across while another does not.
    The dtype's rounding then decides its sign, so whether the element is a
    number or NaN (sqrt) or which way it moves (sign), and it is not judged
    from then on. A sum of terms of one sign cannot spread that far (each
    rounding moves it by a relative unit roundoff: it takes hundreds of
    roundings in bfloat16 to spread by 8 times its size), and an argument
    the runs agree on (0 included) is determined."""
    out = np.zeros(shape, dtype=bool)
    for step, kind, x in edges:
        if step >= shape[0]:
            continue
        lo, hi = x.min(axis=0), x.max(axis=0)
        with np.errstate(all="ignore"):
            if kind == "sqrt":
                mask = (hi > lo) & (hi > 0) & (lo * tol.noise_factor <= hi - lo)
            else:  # sign
                small = np.where(np.sign(lo) == np.sign(hi), np.minimum(np.abs(lo), np.abs(hi)), 0.0)
                mask = (hi > lo) & (small * tol.noise_factor <= hi - lo)
        if mask.any():
            out[step] |= mask.reshape(shape[1:]) if mask.size == int(np.prod(shape[1:])) else np.broadcast_to(mask, shape[1:])
    return out


def run_case_rounded(spec: Spec, case: Case, variants: tuple[str, ...], rounding: RoundingModel) -> Trajectory:
    """The case under a rounding model. Each operation is computed in long
    double for a float64 case, in float64 for a narrower one (exact products,
    and correctly rounded +, -, *, /, sqrt of float32 operands: 53 >= 2*24 + 2
    bits), then rounded to the case dtype."""
    return run(
        spec,
        case.hyperparameters,
        case.params,
        case.grads,
        variants=variants,
        lr_schedule=case.lr_schedule,
        sparse_rows=case.sparse_rows,
        slice_terms=case.slice_terms,
        compute_dtype="longdouble" if case.dtype == "float64" else "float64",
        rounding=rounding,
        case_dtype=case.dtype,
    )


def _worse(noise: np.ndarray, exact: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    """The largest distance of the rounded runs (steps, samples, *shape) from the exact one."""
    exact = exact[:, None]
    diff = np.abs(rounded - exact)
    same = (rounded == exact) | (np.isnan(rounded) & np.isnan(exact))
    # Non-finite where the exact run is finite (or the reverse): the dtype
    # cannot represent this element's computation; mark it unjudgeable.
    diff = np.where(same, 0.0, np.where(np.isfinite(diff), diff, np.inf))
    return np.maximum(noise, diff.astype(np.float64).max(axis=1))


def _bound(exact: np.ndarray, noise: np.ndarray, tol: Tolerance, dtype: str) -> np.ndarray:
    return np.maximum(tol.noise_factor * noise, tol.floor_ulps * ulp(exact, dtype))
