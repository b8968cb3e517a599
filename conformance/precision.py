"""The precision axis: how far a framework is from the exact rule, against what
rounding in the case's own dtype alone explains.

The semantics axis (`conformance.compare.classify`) judges a framework
against everything that makes it what it is, its declared lower precision
included: hyperparameters it stores narrower (`input_dtypes`), the precision
it gives scalar operands (`hyperparameter_dtype`), variants that write a
precision loss as equations (`precision: true`, e.g. Keras' bias correction
from float32 betas) and declared known issues. That is right for "which rule
does it compute", and wrong for "how well": a float64 model whose optimizer
keeps lr in float32 would be `conforms`, because the bound that judges it
was widened by the very loss the user needs to hear about.

So every executed case is judged a second time (`judge`), against

- the exact rule: the variants the framework follows, without its precision
  variants, evaluated in long double on the hyperparameters as the user gave
  them (not as the framework stores them);
- a bound from the rounding model of the case's own dtype alone: every
  operation rounded to the dtype, hyperparameters in float64, nothing the
  framework declares (`conformance.compare.reference` with
  hyperparameter_dtype float64).

Outcomes, worst first:

- `nonfinite`: NaN or inf where the exact rule is finite and inside the
  dtype's range;
- `stalled`: a parameter element that never moves, where the exact rule
  moves it and so does every run of the own-dtype rounding model (the
  dtype's arithmetic alone would not keep it still), and none of its
  computation goes below the dtype's normal range;
- `precision-loss`: beyond the bound elsewhere; its size in relative error,
  ulps and multiples of the bound;
- `exact`: within it.

A finding is *declared* when the semantics axis passed (the framework's
declared model, or the dtype's own arithmetic, explains it); its cause names
the pieces of that model the case needed (each declared piece dropped in turn
from the model: a piece without which the observed values are no longer
explained is named), the hyperparameters that degenerate in the dtype
(`beta2 = 0.999 rounds to 1 in bfloat16`) and, for `nonfinite`, the first
equation that turned non-finite. An undeclared finding (the semantics axis
failed too) fails the case; `undeclared_model` names a precision model that
the spec does not declare but that explains the observed values.

Nothing is silently left out: elements where the exact rule itself leaves the
dtype's range are counted as `out_of_range`, and elements the own-dtype model
cannot bound (its rounded runs went through subnormals or became non-finite)
as `unjudged`, each with its count in the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import ml_dtypes
import numpy as np

from .case import Case
from .compare import compare, element_errors
from .jsonnum import to_json
from .tolerance import Reference, Rounding, Tolerance, Trajectory, reference, tolerance_for
from .dtypes import PRECISION, numpy_dtype, round_through, round_to, ulp
from .kernel import run as kernel_run, run_case
from .outcomes import EXACT, FINDINGS, NONFINITE, PRECISION_LOSS, STALLED, PrecisionOutcome
from .spec import ModeConfig, Spec



@dataclass(frozen=True)
class PrecisionVerdict:
    outcome: PrecisionOutcome
    declared: bool = True  # explained by the declared precision model or the dtype's own arithmetic
    cause: str = ""
    elements: int = 0  # elements (over steps and slots) with the finding
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    max_ulp_error: float = 0.0
    margin: float = 0.0  # largest error / own-dtype bound
    first_step: int | None = None  # 1-based
    slot: str | None = None
    element: tuple[int, ...] | None = None
    observed_value: float | None = None
    exact_value: float | None = None
    bound_value: float | None = None
    out_of_range: int = 0  # elements where the exact rule leaves the dtype's range
    unjudged: dict[str, int] = field(default_factory=dict)  # reason -> elements the own-dtype model cannot bound

    @property
    def finding(self) -> bool:
        return self.outcome in FINDINGS

    @property
    def failing(self) -> bool:
        """An undeclared finding fails like `diverges`."""
        return self.finding and not self.declared

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "declared": self.declared,
            "cause": self.cause,
            "elements": self.elements,
            "max_abs_error": to_json(self.max_abs_error),
            "max_rel_error": to_json(self.max_rel_error),
            "max_ulp_error": to_json(self.max_ulp_error),
            "margin": to_json(self.margin),
            "first_step": self.first_step,
            "slot": self.slot,
            "element": list(self.element) if self.element is not None else None,
            "observed": to_json(self.observed_value),
            "exact": to_json(self.exact_value),
            "bound": to_json(self.bound_value),
            "out_of_range": self.out_of_range,
            "unjudged": dict(self.unjudged),
        }


@dataclass(frozen=True)
class Piece:
    """One declared piece of a mode's precision model that acts on this case."""

    kind: str  # "input" | "hyperparameter_dtype" | "variant" | "known_issue"
    name: str
    text: str


# ---------------------------------------------------------------------------
# What the mode declares, and what acts on a case


def effective_hyperparameter_dtype(hyperparameter_dtype: str, dtype: str) -> str | None:
    """The dtype the framework gives scalar hyperparameters in a `dtype` case,
    where that is narrower than float64 (None: no loss from it)."""
    if hyperparameter_dtype == "float32":
        return "float32" if PRECISION[dtype][0] >= PRECISION["float32"][0] else dtype
    if hyperparameter_dtype in ("tensor", "cast") and dtype != "float64":
        return dtype
    return None


def pieces(spec: Spec, mode: ModeConfig, case: Case, expected: Sequence[str], known_issue: Any = None) -> list[Piece]:
    """The declared precision pieces that act on this case (the user's hyperparameters)."""
    hp = spec.resolve(case.hyperparameters)
    out = []
    for name, stages in mode.input_dtypes:
        values = list(case.lr_schedule) if name == "lr" and case.lr_schedule is not None else [hp.get(name)]
        held = [_stored(v, stages, case.dtype) for v in values]
        changed = [(v, h) for v, h in zip(values, held) if _numeric(v) and h != v]
        if changed:
            v, h = changed[0]
            where = " then ".join(case.dtype if s == "tensor" else s for s in stages)
            out.append(Piece("input", name, f"{name} stored as {where} ({v!r} held as {h!r})"))
    hd = effective_hyperparameter_dtype(mode.hyperparameter_dtype, case.dtype)
    if hd is not None:
        text = {
            "float32": f"hyperparameters passed to the kernels as {hd}",
            "tensor": f"scalar hyperparameters rounded to {hd} where they meet the tensors",
            "cast": f"hyperparameters cast to {hd} before their arithmetic",
        }[mode.hyperparameter_dtype]
        out.append(Piece("hyperparameter_dtype", mode.hyperparameter_dtype, text))
    for v in expected:
        variant = spec.variants.get(v)
        if variant is not None and variant.precision:
            out.append(Piece("variant", v, f"variant {v}"))
    if known_issue is not None:
        out.append(Piece("known_issue", "known issue", f"known issue: {_first_sentence(known_issue.reason)}"))
    return out


def degenerate(spec: Spec, mode: ModeConfig, case: Case) -> list[str]:
    """Hyperparameters that the dtype (or the framework's storage) turns into
    something else in kind: 0, 1, inf, or a decay rate 1 - x off by more than 10%."""
    hp = spec.resolve(case.hyperparameters)
    stages_of = dict(mode.input_dtypes)
    out = []
    for name, v in hp.items():
        if not _numeric(v) or v == 0:
            continue
        roundings = [(case.dtype, float(round_to(np.float64(v), case.dtype)))] if case.dtype != "float64" else []
        if name in stages_of:
            roundings.insert(0, ("/".join(case.dtype if s == "tensor" else s for s in stages_of[name]), _stored(v, stages_of[name], case.dtype)))
        for where, r in roundings:
            if _degenerates(float(v), r):
                out.append(f"{name} = {v!r} rounds to {r!r} in {where}")
                break
    return out


def _degenerates(v: float, r: float) -> bool:
    with np.errstate(all="ignore"):
        if r == 0 or not np.isfinite(r) or (r == 1 and v != 1):
            return True
        if 0 < v < 1 and 1 - v > 0:
            return abs((1 - r) - (1 - v)) > 0.1 * (1 - v)
    return False


def _stored(value: Any, stages: Sequence[str], dtype: str) -> Any:
    return round_through(value, stages, dtype) if _numeric(value) else value


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating)) and not isinstance(v, (bool, np.bool_))


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    cut = text.find(". ")
    return text if cut < 0 else text[:cut]


# ---------------------------------------------------------------------------
# The judgement


def exact_variants(spec: Spec, expected: Sequence[str]) -> tuple[str, ...]:
    """The rule a framework follows, without the variants that are its precision."""
    return tuple(v for v in expected if not (v in spec.variants and spec.variants[v].precision))


def judge(
    spec: Spec,
    mode: ModeConfig,
    case: Case,
    held: Case,
    expected: Sequence[str],
    observed: Trajectory,
    *,
    semantics_ok: bool,
    known_issue: Any = None,
    tol: Tolerance | None = None,
    ref_of: Callable[[Case, tuple[str, ...], str], Reference] | None = None,
) -> PrecisionVerdict:
    """The precision verdict of one case. `case` has the user's hyperparameters,
    `held` the framework's stored ones (`runner.stored_inputs`); `semantics_ok`
    says whether the semantics axis passed (which makes a finding declared)."""
    tol = tol or tolerance_for(spec, case.dtype)
    ref_of = ref_of or (lambda c, v, hd: reference(spec, c, v, tol, hyperparameter_dtype=hd))
    variants = exact_variants(spec, expected)
    ref = ref_of(case, variants, "float64")
    dtype = case.dtype
    big = float(ml_dtypes.finfo(numpy_dtype(dtype)).max)
    slots = [("p", observed.params, ref.values.params, ref.bound.params)]
    slots += [(k, observed.state[k], ref.values.state[k], ref.bound.state[k]) for k in observed.state if k in ref.values.state]
    taint = ref.taint if ref.taint is not None else np.zeros(ref.values.params.shape, dtype=bool)

    stalled_p = _stalled(case, np.asarray(observed.params, np.float64), ref)
    out_of_range = 0
    unjudged = {"subnormal intermediates": 0, "sqrt or sign of a cancellation": 0, "own-dtype arithmetic not finite": 0}
    undetermined = ref.undetermined if ref.undetermined is not None else np.zeros(ref.values.params.shape, dtype=bool)
    nonfinite: list[tuple[int, str, tuple[int, ...], float, float]] = []
    loss = _Worst()
    with np.errstate(all="ignore"):
        for name, obs, exp, bound in slots:
            obs = np.asarray(obs, dtype=np.float64)
            in_range = np.isfinite(exp) & (np.abs(exp) <= big)
            out_of_range += int((~in_range).sum())
            bad_nf = in_range & ~np.isfinite(obs)
            if bad_nf.any():
                step = int(np.argmax(bad_nf.reshape(bad_nf.shape[0], -1).any(axis=1)))
                idx = _first_index(bad_nf[step])
                nonfinite.append((int(bad_nf.sum()), name, (step,) + idx, float(obs[step][idx]), float(exp[step][idx])))
            judged = in_range & np.isfinite(obs) & np.isfinite(bound)
            not_bounded = in_range & np.isfinite(obs) & ~np.isfinite(bound)
            unjudged["subnormal intermediates"] += int((not_bounded & taint).sum())
            unjudged["sqrt or sign of a cancellation"] += int((not_bounded & ~taint & undetermined).sum())
            unjudged["own-dtype arithmetic not finite"] += int((not_bounded & ~taint & ~undetermined).sum())
            diff = element_errors(obs, exp)
            beyond = judged & (diff > bound)
            if name == "p":
                beyond &= ~np.broadcast_to(stalled_p, beyond.shape)
            loss.add(name, beyond, obs, exp, bound, diff, dtype)
    unjudged = {k: v for k, v in unjudged.items() if v}
    common = dict(out_of_range=out_of_range, unjudged=unjudged)
    if nonfinite:
        count = sum(n for n, *_ in nonfinite)
        n, name, where, o, e = min(nonfinite, key=lambda x: x[2][0])
        verdict = PrecisionVerdict(NONFINITE, elements=count, first_step=where[0] + 1, slot=name, element=where[1:],
                                   observed_value=o, exact_value=e, **common)
    elif stalled_p.any():
        p0 = np.asarray(case.params, np.float64)
        moved = np.abs(ref.values.params - p0)
        idx = _first_index(stalled_p)
        last = ref.values.params.shape[0] - 1
        verdict = PrecisionVerdict(
            STALLED, elements=int(stalled_p.sum()), first_step=1, slot="p", element=idx,
            observed_value=float(p0[idx]) if p0.ndim else float(p0), exact_value=float(ref.values.params[last][idx]),
            bound_value=float(ref.bound.params[last][idx]), max_abs_error=float(moved[last][idx]), **common,
        )
    elif loss.count:
        verdict = PrecisionVerdict(PRECISION_LOSS, elements=loss.count, max_abs_error=loss.max_abs, max_rel_error=loss.max_rel,
                                   max_ulp_error=loss.max_ulp, margin=loss.margin, first_step=loss.first[0] + 1, slot=loss.first[1],
                                   element=loss.first[2], observed_value=loss.first[3], exact_value=loss.first[4],
                                   bound_value=loss.first[5], **common)
    else:
        return PrecisionVerdict(EXACT, **common)
    cause = explain(spec, mode, case, held, expected, observed, verdict, known_issue, ref, ref_of)
    return replace(verdict, declared=semantics_ok, cause=cause)


def _stalled(case: Case, obs: np.ndarray, ref: Reference) -> np.ndarray:
    """Parameter elements (shape of p) that never move while the exact rule
    moves them and so does every run of the own-dtype rounding model: the
    dtype's arithmetic alone would not keep them still."""
    p0 = np.asarray(case.params, np.float64)
    with np.errstate(all="ignore"):
        still = np.all(obs == p0, axis=0)
        exact_moves = np.any(ref.values.params != p0, axis=0)
    moves = ref.moves if ref.moves is not None else np.zeros(p0.shape, dtype=bool)
    # An element whose computation goes below the normal range is not judged
    # (counted as unjudged): a framework that flushes subnormals to zero
    # (TensorFlow on the CPU) keeps it still where numpy's arithmetic moves it.
    subnormal = np.any(ref.taint, axis=0) if ref.taint is not None else np.zeros(p0.shape, dtype=bool)
    return still & exact_moves & moves & ~subnormal.reshape(p0.shape)


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    if mask.ndim == 0:
        return ()
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


class _Worst:
    """Accumulates the precision-loss elements over slots: size and the first."""

    def __init__(self) -> None:
        self.count = 0
        self.max_abs = self.max_rel = self.max_ulp = self.margin = 0.0
        self.first: tuple[int, str, tuple[int, ...], float, float, float] | None = None

    def add(self, name, beyond, obs, exp, bound, diff, dtype) -> None:
        n = int(beyond.sum())
        if not n:
            return
        self.count += n
        d = np.where(beyond, diff, 0.0)
        self.max_abs = max(self.max_abs, float(d.max()))
        self.max_rel = max(self.max_rel, float(np.nanmax(np.where(beyond, d / np.abs(exp), 0.0))))
        self.max_ulp = max(self.max_ulp, float(np.nanmax(np.where(beyond, d / ulp(exp, dtype), 0.0))))
        self.margin = max(self.margin, float(np.nanmax(np.where(beyond, d / bound, 0.0))))
        step = int(np.argmax(beyond.reshape(beyond.shape[0], -1).any(axis=1)))
        if self.first is None or step < self.first[0]:
            ratio = np.where(beyond[step], diff[step] / bound[step], -1.0)
            idx = _first_index(ratio == ratio.max()) if ratio.ndim else ()
            self.first = (step, name, idx, float(obs[step][idx]), float(exp[step][idx]), float(bound[step][idx]))


# ---------------------------------------------------------------------------
# Causes


def explain(
    spec: Spec,
    mode: ModeConfig,
    case: Case,
    held: Case,
    expected: Sequence[str],
    observed: Trajectory,
    verdict: PrecisionVerdict,
    known_issue: Any,
    ref: Reference,
    ref_of: Callable[[Case, tuple[str, ...], str], Reference],
) -> str:
    """The cause of a finding, in words, from the declared model and the dtype."""
    parts: list[str] = []
    bad = degenerate(spec, mode, case)
    if bad:
        parts.append("; ".join(bad))
    declared = pieces(spec, mode, case, expected, known_issue)
    if verdict.outcome == PRECISION_LOSS and len(declared) > 1:
        declared = _needed(spec, mode, case, held, expected, observed, declared, ref, ref_of) or declared
    if declared:
        parts.append("declared: " + "; ".join(p.text for p in declared))
    elif verdict.outcome != PRECISION_LOSS:
        parts.append(f"the arithmetic of {case.dtype} itself")
    if verdict.outcome == NONFINITE:
        step, idx = (verdict.first_step or 1) - 1, tuple(verdict.element or ())
        if ref.undetermined is not None and ref.undetermined[(step,) + idx[: ref.undetermined.ndim - 1]].any():
            parts.append(f"a square root's or sign's argument is within rounding of 0 in {case.dtype} (a cancellation), from step"
                         f" {int(np.argmax(ref.undetermined.reshape(ref.undetermined.shape[0], -1).any(axis=1))) + 1}:"
                         " the order of operations decides which side of 0 it rounds to (NaN from sqrt)")
        origin = first_nonfinite(spec, mode, held, expected)
        if origin:
            parts.append(origin)
    if verdict.outcome == STALLED:
        parts.append(f"{verdict.elements} parameter element(s) never move; the exact rule moves element"
                     f" {list(verdict.element or ())} by {verdict.max_abs_error:.3g}")
    return "; ".join(parts)


def _needed(spec, mode, case, held, expected, observed, declared, ref, ref_of) -> list[Piece]:
    """The pieces without which the declared model no longer explains the
    observed values (each dropped in turn). Each test is one exact kernel run
    with the remaining pieces, against the bound of the declared model (when
    the hyperparameter precision remains) or the own-dtype one: a naming
    aid, not a verdict, so it borrows the bounds it already has."""
    declared_bound = ref_of(held, tuple(expected), mode.hyperparameter_dtype).bound
    hp = spec.resolve(case.hyperparameters)
    needed = []
    for piece in declared:
        if piece.kind == "known_issue":
            needed.append(piece)
            continue
        rest = [p for p in declared if p is not piece]
        inputs = {p.name for p in rest if p.kind == "input"}
        given = dict(case.hyperparameters)
        schedule = case.lr_schedule
        for name, stages in mode.input_dtypes:
            if name in inputs:
                given[name] = _stored(hp.get(name), stages, case.dtype)
                if name == "lr" and schedule is not None:
                    schedule = tuple(_stored(x, stages, case.dtype) for x in schedule)
        variants = exact_variants(spec, expected) + tuple(p.name for p in rest if p.kind == "variant")
        values = run_case(spec, replace(case, hyperparameters=given, lr_schedule=schedule), variants, compute_dtype="longdouble")
        values = Trajectory(values.params.astype(np.float64), {k: v.astype(np.float64) for k, v in values.state.items()})
        bound = declared_bound if any(p.kind == "hyperparameter_dtype" for p in rest) else ref.bound
        if not compare(observed, Reference(variants, values, bound), case.dtype).ok:
            needed.append(piece)
    return needed


def first_nonfinite(spec: Spec, mode: ModeConfig, held: Case, expected: Sequence[str]) -> str:
    """Where the declared model, rounded to nearest in the case dtype, first
    turns non-finite: the equation, step and element, and whether that
    element's gradient was 0 until then."""
    found: list[tuple[int, str, tuple[int, ...]]] = []

    def watch(step: int, target: str, value: np.ndarray) -> None:
        if not found and value.size and not np.isfinite(value).all():
            bad = ~np.isfinite(value)
            found.append((step, target, _first_index(bad) if value.ndim else ()))

    rounding = Rounding(held.dtype, None, mode.hyperparameter_dtype)
    try:
        kernel_run(spec, held.hyperparameters, held.params, held.grads, variants=tuple(expected),
                   lr_schedule=held.lr_schedule, sparse_rows=held.sparse_rows, slice_terms=held.slice_terms,
                   compute_dtype="longdouble", rounding=rounding, case_dtype=held.dtype, watch=watch)
    except Exception:  # the explanation must never break a verdict
        return ""
    if not found:
        return ""
    step, target, idx = found[0]
    eq = next((e for e in spec.equations(tuple(expected)) if e.target == target), None)
    text = f"first non-finite in {held.dtype}: {target} = {eq.expr.source if eq else '?'} at step {step}"
    grads = np.asarray(held.grads, np.float64)
    if idx and grads.ndim > 1 and grads[:step].reshape(step, -1).shape[1] > 0:
        flat = grads[:step].reshape((step,) + grads.shape[1:])
        try:
            if np.all(flat[(slice(None),) + idx[-(grads.ndim - 1):]] == 0):
                text += f", element {list(idx)} (its gradient is 0 so far)"
            else:
                text += f", element {list(idx)}"
        except IndexError:
            pass
    return text


def undeclared_model(
    spec: Spec, case: Case, expected: Sequence[str], observed: Trajectory, tol: Tolerance | None = None
) -> str | None:
    """For a case that diverges: a precision model the spec does not declare that
    explains the observed values (every hyperparameter held as float32, or in
    the case dtype), in words; None if none does."""
    tol = tol or tolerance_for(spec, case.dtype)
    hp = spec.resolve(case.hyperparameters)
    models = []
    if case.dtype == "float64":
        models.append(("float32", "float32", "every hyperparameter held as float32"))
    else:
        models.append((case.dtype, "cast", f"every hyperparameter held as {case.dtype}"))
    for dtype, hd, text in models:
        given = {k: (float(round_to(np.float64(v), dtype)) if _numeric(v) else v) for k, v in hp.items()}
        schedule = tuple(float(round_to(np.float64(x), dtype)) for x in case.lr_schedule) if case.lr_schedule else case.lr_schedule
        held = replace(case, hyperparameters=given, lr_schedule=schedule)
        try:
            ref = reference(spec, held, tuple(expected), tol, hyperparameter_dtype=hd)
        except Exception:
            continue
        if compare(observed, ref, case.dtype).ok:
            return text
    return None
