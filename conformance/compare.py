"""The verdict: is a framework's trajectory the rule, a named variant, or neither?

A trajectory is compared element by element, every step and every readable
state slot, with a reference and its error-aware bound
(`conformance.tolerance`). Errors are reported in absolute, relative and ulp
terms, with the first divergent step, slot and element.

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
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .case import Case
from .dtypes import ulp
from .jsonnum import to_json
from .outcomes import CONFORMS, DIVERGES, KNOWN, Outcome
from .spec import LAZY, Spec
from .tolerance import Reference, Tolerance, Trajectory, reference, tolerance_for



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
            "max_abs_error": to_json(self.max_abs_error),
            "max_rel_error": to_json(self.max_rel_error),
            "max_ulp_error": to_json(self.max_ulp_error),
            "margin": to_json(self.margin),
            "bad_elements": self.bad_elements,
            "first_divergent_step": self.first_divergent_step,
            "slot": self.slot,
            "element": list(self.element) if self.element is not None else None,
            "observed": to_json(self.observed_value),
            "expected": to_json(self.expected_value),
            "bound": to_json(self.bound_value),
        }


def element_errors(obs: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """|observed - expected| per element: 0 where they are equal (nan and nan
    included), inf where they cannot be compared (nan vs a number, inf vs -inf)."""
    with np.errstate(all="ignore"):
        diff = np.abs(obs - exp)
        same = (obs == exp) | (np.isnan(obs) & np.isnan(exp))
        return np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))


def compare(observed: Trajectory, ref: Reference, dtype: str) -> Comparison:
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
    outcome: Outcome
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
        return self.outcome.failing or (self.precision is not None and self.precision.failing)

    def to_json(self) -> dict[str, Any]:
        return {
            "sparse_semantics": self.sparse,
            "outcome": str(self.outcome),
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
    observed: Trajectory,
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
        toggled = tuple(v for v in expected if v != LAZY.name) if LAZY.name in expected else expected + (LAZY.name,)
        vs_toggled = compare(observed, ref_of(toggled), case.dtype)
        lazy_ok, dense_ok = (vs_expected.ok, vs_toggled.ok) if LAZY.name in expected else (vs_toggled.ok, vs_expected.ok)
        sparse = "either" if lazy_ok and dense_ok else "lazy" if lazy_ok else "dense" if dense_ok else "neither"
        if not vs_expected.ok and vs_toggled.ok:
            where = _where(vs_expected)
            declared = "lazy" if LAZY.name in expected else "dense"
            text = f"the untouched rows follow {sparse} sparse semantics, not the declared {declared} ({where})"
            if known_issue is not None:
                return Verdict(KNOWN, expected, None, vs_expected, None, (toggled,), False, f"known issue: {known_issue.reason} ({where})", known_issue=known_issue.reason, sparse=sparse)
            return Verdict(DIVERGES, expected, toggled, vs_expected, None, ((LAZY.name,) if sparse == "lazy" else toggled,), False, text, sparse=sparse)
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
    observed: Trajectory,
    *,
    exclude: tuple[str, ...] = (),
    ref_of: Any,
    max_size: int = 3,
) -> tuple[tuple[str, ...], ...]:
    """Every minimal combination of the spec's variants (in spec order) that matches."""
    names = [n for n in spec.variants if n != LAZY.name or case.sparse_rows is not None]
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
