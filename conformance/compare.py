"""The comparison: is a framework's trajectory the rule, a named variant, or neither?

A fixed rtol either hides real divergences or cries wolf on ill-conditioned
cases (tiny eps, v near zero, a centered variance near zero), so the bound is
error-aware. For every element of every step and state slot it is

    bound = max(noise_factor * noise, floor_ulps * ulp(reference))

where `noise` is how far rounding alone moves that element: the largest
distance from the float64 reference among a few runs of the same equations
under a model of low-precision arithmetic (every array operation rounded to
the case dtype, once to nearest and then after random relative jitter of up
to one unit roundoff; see `conformance.kernel.run`, `rounding`). Where even
a rounded run leaves the finite range (overflow, 0/0) the reference is not
representable in that dtype and the element is not judged.

Classification of one executed case (`classify`):
- `conforms`: within the bound of the canonical rule (or of the declared
  variants and the canonical rule alike: the case does not tell them apart);
- `known-divergence`: within the bound of the variants the spec declares for
  the framework (`expect`), and not of the canonical rule;
- `diverges`: neither; the fingerprint lists every other combination of the
  spec's variants that does match. A framework that now matches the
  canonical rule where the spec declares a variant also `diverges`, marked
  `stale` (the spec no longer describes the framework).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .case import Case
from .dtypes import PRECISION, numpy_dtype, ulp, unit_roundoff
from .kernel import run, run_case
from .spec import Spec

CONFORMS = "conforms"
KNOWN = "known-divergence"
DIVERGES = "diverges"
UNSUPPORTED = "unsupported"
CRASH = "crash"
#: Outcomes from worst to best; a cell shows the worst of its cases.
OUTCOMES = (CRASH, DIVERGES, KNOWN, CONFORMS, UNSUPPORTED)
FAILING = frozenset({DIVERGES, CRASH})


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
class Trajectories:
    """Parameters and canonical state slots after every step, float64 arrays (steps, *shape)."""

    params: np.ndarray
    state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Reference:
    """A kernel run of some variants and the per-element bound around it."""

    variants: tuple[str, ...]
    values: Trajectories
    bound: Trajectories
    #: (steps, *shape): elements whose computation went below the dtype's
    #: normal range in a rounded run (not judged from then on; their bound is
    #: inf). An infinite bound elsewhere: a rounded run was not finite there.
    taint: np.ndarray | None = None
    #: (shape of p): parameter elements that every rounded run moves at some
    #: step (the dtype's own arithmetic cannot keep them still)
    moves: np.ndarray | None = None


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

    def __init__(self, dtype: str, rng: np.random.Generator | None, hyperparameter_dtype: str = "float64"):
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
        self.taint_steps: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.rng is not None:
            r = self.rng.uniform(-1.0, 1.0, x.shape)
            if getattr(self.rng, "signed", False):
                r = r * np.sign(x)  # toward +inf / -inf, whatever the sign of x
            x = x * (1.0 + self.u * r)
        with np.errstate(all="ignore"):
            tiny = (x != 0) & (np.abs(x) < self.min_normal)
        if tiny.any():
            self.taint = tiny if self.taint is None else (self.taint | tiny)
        return x.astype(self.low).astype(x.dtype)

    def operand(self, x: np.floating) -> np.floating:
        """A scalar operand of an array operation, as the framework passes it (`hyperparameter_dtype`)."""
        return type(x)(self.hp_low.type(x))

    def scalar(self, x: np.floating) -> np.floating:
        if self.rng is not None:
            x = x * (1.0 + self.scalar_u * self.rng.uniform(-1.0, 1.0))
        return type(x)(self.scalar_low.type(x))

    def carry(self, new: np.ndarray, old: Any) -> np.ndarray:
        old = np.asarray(old)
        with np.errstate(all="ignore"):
            # Written as an increment, the update passes through new - old:
            # where that is below the normal range, a framework that flushes
            # subnormals to zero (TensorFlow on the CPU) keeps the old value.
            step = np.abs(new - old)
            tiny = (step != 0) & (step < self.min_normal)
        if tiny.any():
            tiny = np.broadcast_to(tiny, new.shape)
            self.taint = tiny.copy() if self.taint is None else (self.taint | tiny)
        if self.rng is None:
            return new
        with np.errstate(all="ignore"):
            jitter = self.u * np.abs(old) * self.rng.uniform(-1.0, 1.0, np.broadcast_shapes(new.shape, old.shape))
            jitter = np.where(np.isfinite(jitter), jitter, 0.0)
        return (new + jitter).astype(self.low).astype(new.dtype)

    def gradient(self, g: np.ndarray, repeated_abs: np.ndarray) -> np.ndarray:
        """A step's gradient where rows are listed twice: known only up to a unit
        roundoff of the sum of |slices| (a framework may divide, scale and sum
        the slices in any order: Keras' sparse divide is per slice)."""
        if self.rng is None or not np.any(repeated_abs):
            return g
        return g + (self.u * repeated_abs * self.rng.uniform(-1.0, 1.0, g.shape)).astype(g.dtype)

    def taint_below(self, values: np.ndarray) -> None:
        """Taint the elements where a nonzero intermediate the equations do not
        show (one slice's square) is below the normal range."""
        tiny = values < self.min_normal
        if tiny.any():
            self.taint = tiny.copy() if self.taint is None else (self.taint | tiny)

    def end_step(self) -> None:
        self.taint_steps.append(self.taint)


def reference(
    spec: Spec, case: Case, variants: Sequence[str], tol: Tolerance, seed: int = 0, hyperparameter_dtype: str = "float64"
) -> Reference:
    """The reference run of `variants` and its bound, both float64.

    The reference itself is computed in long double where the platform has
    it (see `conformance.kernel.run`), and so are the rounded runs, whose
    every operation is then rounded to the case dtype, float64 included.
    """
    variants = tuple(variants)
    exact = run_case(spec, case, variants, compute_dtype="longdouble")
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"):
        noise_p = np.zeros(exact.params.shape)
        noise_s = {k: np.zeros(v.shape) for k, v in exact.state.items()}
        taint = np.zeros(exact.params.shape, dtype=bool)
        p0 = np.asarray(case.params, dtype=np.float64)
        moves = np.ones(p0.shape, dtype=bool)
        for i in range(max(tol.samples, 1)):
            # Sample 0 rounds to nearest. 1 and 2 push every operation one unit
            # roundoff away from zero, then toward zero: a relative bias that
            # accumulates through products and cancellation (m + (g - m)(1 - beta1)
            # with a small beta1), which random jitter underestimates. 3 and 4
            # push every operation toward +inf, then -inf (directed rounding, as
            # in CESTAC-style estimates): the bias that accumulates in a sum of
            # increments of either sign (p -= lr * g / sqrt(v) over steps whose
            # gradients change sign), where pushing away from zero cancels out.
            # Both push a result that is exact in the spec's order by an ulp, as
            # a framework that computes it in another order may (x / sqrt(y) as
            # x * rsqrt(y): TensorFlow's grappler and XLA). The rest jitter at random.
            jitter = None if i == 0 else _DIRECTED[i - 1] if i <= len(_DIRECTED) else rng
            rounding = Rounding(case.dtype, jitter, hyperparameter_dtype)
            rounded = run_case_rounded(spec, case, variants, rounding)
            moves &= np.any(rounded.params != p0, axis=0)
            noise_p = _worse(noise_p, exact.params, rounded.params)
            for k in noise_s:
                noise_s[k] = _worse(noise_s[k], exact.state[k], rounded.state[k])
            for step, mask in enumerate(rounding.taint_steps):
                if mask is not None:
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
        for b in (bound_p, *bound_s.values()):
            taint |= ~np.isfinite(b)
        taint = np.logical_or.accumulate(taint, axis=0)
        bound_p = np.where(taint, np.inf, bound_p)
        bound_s = {k: np.where(taint, np.inf, b) for k, b in bound_s.items()}
    return Reference(variants, Trajectories(params, state), Trajectories(bound_p, bound_s), subnormal, moves)


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


_DIRECTED = (_Directed(1.0), _Directed(-1.0), _Directed(1.0, signed=True), _Directed(-1.0, signed=True))


def run_case_rounded(spec: Spec, case: Case, variants: tuple[str, ...], rounding: Rounding):
    return run(
        spec,
        case.hyperparameters,
        case.params,
        case.grads,
        variants=variants,
        lr_schedule=case.lr_schedule,
        sparse_rows=case.sparse_rows,
        slice_terms=case.slice_terms,
        compute_dtype="longdouble",
        rounding=rounding,
        case_dtype=case.dtype,
    )


def _worse(noise: np.ndarray, exact: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    diff = np.abs(rounded - exact)
    same = (rounded == exact) | (np.isnan(rounded) & np.isnan(exact))
    # Non-finite where the exact run is finite (or the reverse): the dtype
    # cannot represent this element's computation; mark it unjudgeable.
    diff = np.where(same, 0.0, np.where(np.isfinite(diff), diff, np.inf))
    return np.maximum(noise, diff.astype(np.float64))


def _bound(exact: np.ndarray, noise: np.ndarray, tol: Tolerance, dtype: str) -> np.ndarray:
    return np.maximum(tol.noise_factor * noise, tol.floor_ulps * ulp(exact, dtype))


@dataclass(frozen=True)
class Comparison:
    """How an observed trajectory sits against one reference."""

    ok: bool
    max_abs_error: float
    max_rel_error: float
    max_ulp_error: float
    margin: float  # largest error / bound (<= 1 everywhere when ok)
    bad_elements: int
    first_divergent_step: int | None = None  # 1-based
    slot: str | None = None  # "p" or a state slot
    element: tuple[int, ...] | None = None
    observed_value: float | None = None
    expected_value: float | None = None
    bound_value: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "max_abs_error": _num(self.max_abs_error),
            "max_rel_error": _num(self.max_rel_error),
            "max_ulp_error": _num(self.max_ulp_error),
            "margin": _num(self.margin),
            "bad_elements": self.bad_elements,
            "first_divergent_step": self.first_divergent_step,
            "slot": self.slot,
            "element": list(self.element) if self.element is not None else None,
            "observed": _num(self.observed_value),
            "expected": _num(self.expected_value),
            "bound": _num(self.bound_value),
        }


def _num(x: float | None) -> float | str | None:
    """JSON has no inf/nan: write them as strings."""
    if x is None:
        return None
    x = float(x)
    if np.isfinite(x):
        return x
    return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")


def element_errors(obs: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """|observed - expected| per element: 0 where they are equal (nan and nan
    included), inf where they cannot be compared (nan vs a number, inf vs -inf)."""
    with np.errstate(all="ignore"):
        diff = np.abs(obs - exp)
        same = (obs == exp) | (np.isnan(obs) & np.isnan(exp))
        return np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))


def compare(observed: Trajectories, ref: Reference, dtype: str) -> Comparison:
    slots: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = [
        ("p", observed.params, ref.values.params, ref.bound.params)
    ]
    for name, values in observed.state.items():
        if name in ref.values.state:
            slots.append((name, values, ref.values.state[name], ref.bound.state[name]))
    max_abs = max_rel = max_ulp = margin = 0.0
    bad_total = 0
    first: tuple[int, float, str, tuple[int, ...], float, float, float] | None = None
    with np.errstate(all="ignore"):
        for name, obs, exp, bound in slots:
            obs = np.asarray(obs, dtype=np.float64)
            if obs.shape != exp.shape:
                raise ValueError(f"slot {name}: the framework gave shape {obs.shape}, the reference has {exp.shape}")
            diff = element_errors(obs, exp)
            judged = np.isfinite(bound)
            bad = judged & (diff > bound)
            d = np.where(judged, diff, 0.0)
            if d.size:
                max_abs = max(max_abs, float(d.max()))
                rel = d / np.abs(exp)
                rel = np.where(d == 0, 0.0, rel)
                max_rel = max(max_rel, float(np.nanmax(rel)))
                max_ulp = max(max_ulp, float((d / ulp(exp, dtype)).max()))
                ratio = np.where(d == 0, 0.0, d / bound)
                margin = max(margin, float(np.nanmax(ratio)))
            n_bad = int(bad.sum())
            bad_total += n_bad
            if n_bad:
                step = int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))
                if first is None or step < first[0]:
                    row_ratio = np.where(bad[step], diff[step] / bound[step], -1.0)
                    flat = int(np.argmax(row_ratio))
                    idx = tuple(int(i) for i in np.unravel_index(flat, bad.shape[1:])) if bad.ndim > 1 else ()
                    first = (step, 0.0, name, idx, float(obs[step][idx]), float(exp[step][idx]), float(bound[step][idx]))
    if first is None:
        return Comparison(True, max_abs, max_rel, max_ulp, margin, 0)
    step, _, name, idx, o, e, b = first
    return Comparison(False, max_abs, max_rel, max_ulp, margin, bad_total, step + 1, name, idx, o, e, b)


@dataclass(frozen=True)
class Verdict:
    outcome: str
    expected: tuple[str, ...]  # the declared variants (empty: canonical)
    matched_variant: tuple[str, ...] | None  # what the framework was found to follow
    against_expected: Comparison
    against_canonical: Comparison | None
    fingerprint: tuple[tuple[str, ...], ...] = ()  # every other combination that matches
    stale: bool = False
    explanation: str = ""
    known_issue: str | None = None
    evidenced: tuple[str, ...] = ()  # declared variants this case needed (without one, it would not match)
    # sparse cases: which semantics the untouched rows showed ("dense", "lazy",
    # "either" where this case cannot tell them apart, "neither")
    sparse: str | None = None
    #: the precision axis (conformance.precision.PrecisionVerdict), apart from the semantics
    precision: Any = None

    @property
    def failing(self) -> bool:
        return self.outcome in FAILING or (self.precision is not None and self.precision.failing)

    def to_json(self) -> dict[str, Any]:
        return {
            "sparse_semantics": self.sparse,
            "outcome": self.outcome,
            "expected": list(self.expected),
            "matched_variant": _variant_name(self.matched_variant),
            "fingerprint": [_variant_name(f) for f in self.fingerprint],
            "stale": self.stale,
            "explanation": self.explanation,
            "known_issue": self.known_issue,
            "evidenced": list(self.evidenced),
            "against_expected": self.against_expected.to_json(),
            "against_canonical": self.against_canonical.to_json() if self.against_canonical else None,
            "precision": self.precision.to_json() if self.precision is not None else None,
        }


def _variant_name(variants: tuple[str, ...] | None) -> str | None:
    if variants is None:
        return None
    return "+".join(variants) if variants else "canonical"


def classify(
    spec: Spec,
    case: Case,
    expected: Sequence[str],
    observed: Trajectories,
    *,
    fingerprint: bool = True,
    tol: Tolerance | None = None,
    hyperparameter_dtype: str = "float64",
    known_issue: Any = None,
    references: Any = None,
) -> Verdict:
    """Classify one case's observed trajectory (see the module docstring).
    `references(variants)` may serve the references (a cache shared with the
    precision axis)."""
    tol = tol or tolerance_for(spec, case.dtype)
    expected = tuple(expected)

    def ref_of(variants: tuple[str, ...]) -> Reference:
        if references is not None:
            return references(variants)
        return reference(spec, case, variants, tol, hyperparameter_dtype=hyperparameter_dtype)

    vs_expected = compare(observed, ref_of(expected), case.dtype)
    sparse, toggled = None, None
    if case.sparse_rows is not None:
        # The same declared variants under the other sparse semantics: which
        # of the two the framework's untouched rows follow is measured per case.
        toggled = tuple(v for v in expected if v != "lazy") if "lazy" in expected else expected + ("lazy",)
        vs_toggled = compare(observed, ref_of(toggled), case.dtype)
        lazy_ok, dense_ok = (vs_expected.ok, vs_toggled.ok) if "lazy" in expected else (vs_toggled.ok, vs_expected.ok)
        sparse = "either" if lazy_ok and dense_ok else "lazy" if lazy_ok else "dense" if dense_ok else "neither"
        if not vs_expected.ok and vs_toggled.ok:
            where = _where(vs_expected)
            declared = "lazy" if "lazy" in expected else "dense"
            text = f"the untouched rows follow {sparse} sparse semantics, not the declared {declared} ({where})"
            if known_issue is not None:
                return Verdict(KNOWN, expected, None, vs_expected, None, (toggled,), False, f"known issue: {known_issue.reason} ({where})", known_issue=known_issue.reason, sparse=sparse)
            return Verdict(DIVERGES, expected, toggled, vs_expected, None, (("lazy",) if sparse == "lazy" else toggled,), False, text, sparse=sparse)
    vs_canonical = None
    if expected:
        vs_canonical = compare(observed, ref_of(()), case.dtype)
    if vs_expected.ok:
        if not expected:
            return Verdict(CONFORMS, expected, (), vs_expected, None, explanation="matches the canonical rule", sparse=sparse)
        if vs_canonical is not None and vs_canonical.ok:
            return Verdict(
                CONFORMS,
                expected,
                (),
                vs_expected,
                vs_canonical,
                explanation=f"matches the canonical rule and the declared {_variant_name(expected)} alike (this case does not tell them apart)",
                sparse=sparse,
            )
        evidenced = expected
        if len(expected) > 1:
            # Which of the declared variants did this case need? Drop each in
            # turn: a variant without which the case no longer matches is shown.
            evidenced = tuple(
                v for v in expected if not compare(observed, ref_of(tuple(x for x in expected if x != v)), case.dtype).ok
            )
        return Verdict(
            KNOWN, expected, expected, vs_expected, vs_canonical,
            explanation=f"follows the declared variant {_variant_name(expected)}"
            + (f" (this case shows {', '.join(evidenced)})" if evidenced != expected else ""),
            evidenced=evidenced,
            sparse=sparse,
        )
    stale = bool(expected) and vs_canonical is not None and vs_canonical.ok
    found: tuple[tuple[str, ...], ...] = ((),) if stale else ()
    if fingerprint and not stale:
        found = search_variants(spec, case, observed, exclude=expected, ref_of=ref_of)
    where = _where(vs_expected)
    if stale:
        text = (
            f"matches the canonical rule, not the declared {_variant_name(expected)}: the spec is stale ({where})"
        )
    elif found:
        text = f"matches {', '.join(_variant_name(f) for f in found)} instead of {_variant_name(expected)} ({where})"
    else:
        text = f"matches no known variant ({where})"
    if known_issue is not None:
        # The recorded framework bug explains the departure from the declared
        # variant (even where it happens to land within canonical's bound).
        return Verdict(
            KNOWN, expected, None, vs_expected, vs_canonical, found, False,
            f"known issue: {known_issue.reason} ({where})", known_issue=known_issue.reason, sparse=sparse,
        )
    return Verdict(
        DIVERGES, expected, found[0] if len(found) == 1 else None, vs_expected, vs_canonical, found, stale, text, sparse=sparse
    )


def _where(c: Comparison) -> str:
    """Where a comparison first failed, for an explanation."""
    return (
        f"step {c.first_divergent_step}, {c.slot}{list(c.element) if c.element else ''}:"
        f" got {c.observed_value!r}, expected {c.expected_value!r} within {c.bound_value!r}"
    )


def search_variants(
    spec: Spec,
    case: Case,
    observed: Trajectories,
    *,
    exclude: tuple[str, ...] = (),
    ref_of: Any,
    max_size: int = 3,
) -> tuple[tuple[str, ...], ...]:
    """Every minimal combination of the spec's variants (in spec order) that matches."""
    names = [n for n in spec.variants if n != "lazy" or case.sparse_rows is not None]
    found: list[tuple[str, ...]] = []
    candidates: list[tuple[str, ...]] = [()] if exclude else []
    for size in range(1, min(max_size, len(names)) + 1):
        candidates += list(itertools.combinations(names, size))
    for combo in candidates:
        if combo == exclude or any(set(f) <= set(combo) for f in found if f):
            continue
        if () in found:
            break
        try:
            ref = ref_of(combo)
        except Exception:  # a combination whose equations do not compose
            continue
        if compare(observed, ref, case.dtype).ok:
            found.append(combo)
    return tuple(found)
