"""What the report shows for one recorded case: the evidence behind a verdict.

A results record keeps the case and what the framework computed (its
trajectory). From those two this module recomputes, with the same kernel
and tolerance the run used, the references the verdict was judged against
(the declared variants and the canonical rule) and turns them into what a
person reads: per step, the worst error against its rounding bound
(absolute and in ulps), and the trajectory of one element (framework,
declared reference, canonical reference, the bound around the reference).

Nothing here runs a framework: a report is written from results alone,
anywhere, after the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .case import Case
from .cells import Cell
from .compare import compare, element_errors
from .jsonnum import to_json
from .tolerance import Reference, tolerance_for
from .dtypes import ulp
from .judging import stored_inputs
from .precision import exact_variants
from .records import trajectories_from_json
from .spec import Spec
from .tolerance import Trajectory, shared_reference


@dataclass(frozen=True)
class References:
    """The references one recorded case is shown against, by name."""

    named: dict[str, Reference]  # "declared: epsilon_hat", "canonical", or a cross cell's first side
    declared: str  # the name of the reference the verdict judged (`expected`)


def references(spec: Spec, record: dict[str, Any], case: Case) -> References:
    """The declared reference (what the verdict compared with) and, where the
    spec declares a variant, the canonical one; for a cross cell, its first
    side with the declared reference's bound."""
    expected = tuple(record.get("expected") or ())
    cell = Cell.from_json(record)
    mode = spec.mode(cell.framework, cell.mode)  # (a cross cell's first side)
    tol = tolerance_for(spec, case.dtype)
    hp_dtype = mode.hyperparameter_dtype
    user = case
    case = stored_inputs(spec, mode, case)  # the record keeps the user's hyperparameters; the verdict used the stored ones
    exp_ref = shared_reference(spec, case, expected, tol, hp_dtype)
    first = record.get("first_side")
    if first is not None:
        a = trajectories_from_json(first)
        name = _first_side_name(cell)
        side = Reference(expected, Trajectory(a.params, {k: v for k, v in a.state.items() if k in exp_ref.bound.state}), exp_ref.bound)
        return References({name: side}, name)
    name = "declared " + "+".join(expected) if expected else "canonical"
    named = {name: exp_ref}
    if expected:
        named["canonical"] = shared_reference(spec, case, (), tol, hp_dtype)
    precision = record.get("precision") or {}
    if precision.get("outcome") not in (None, "exact"):
        # the precision axis: the exact rule on the user's hyperparameters, with the own-dtype bound
        named["exact rule (precision axis)"] = shared_reference(spec, user, exact_variants(spec, expected), tol)
    return References(named, name)


def _first_side_name(cell: Cell) -> str:
    if cell.crosses("gradients"):
        return "dense gradients"  # the sparse~dense oracle judges the sparse side against the dense one
    if cell.crosses("mode") or cell.crosses("device"):
        return f"{cell.side_names()[0]} ({cell.cross.axis})"
    return "first side"


def per_step(observed: Trajectory, ref: Reference, dtype: str) -> dict[str, Any]:
    """Per step, the element whose error is largest against its bound (over
    the parameter and every state slot both have): its error and bound,
    absolute and in ulps of the dtype at the reference value, and where."""
    steps = observed.params.shape[0]
    slots = [("p", observed.params, ref.values.params, ref.bound.params)]
    slots += [(k, v, ref.values.state[k], ref.bound.state[k]) for k, v in observed.state.items() if k in ref.values.state]
    out: dict[str, list[Any]] = {k: [] for k in ("error", "bound", "error_ulp", "bound_ulp", "max_ulp", "ratio", "where")}
    with np.errstate(all="ignore"):
        prepared = []
        for name, obs, exp, bound in slots:
            obs = np.asarray(obs, dtype=np.float64).reshape(steps, -1)
            exp = np.asarray(exp, dtype=np.float64).reshape(steps, -1)
            bound = np.asarray(bound, dtype=np.float64).reshape(steps, -1)
            diff = element_errors(obs, exp)
            judged = np.isfinite(bound)
            u = ulp(exp, dtype)
            ratio = np.where(judged, np.where(diff == 0, 0.0, diff / bound), -1.0)
            prepared.append((name, diff, bound, u, ratio, judged))
        shape = observed.params.shape[1:]
        for s in range(steps):
            best = None
            max_ulp = 0.0
            for name, diff, bound, u, ratio, judged in prepared:
                if judged[s].any():
                    max_ulp = max(max_ulp, float(np.max(np.where(judged[s], diff[s] / u[s], 0.0))))
                i = int(np.argmax(ratio[s]))
                if ratio[s][i] >= 0 and (best is None or ratio[s][i] > best[0]):
                    best = (float(ratio[s][i]), name, i, diff[s][i], bound[s][i], u[s][i])
            if best is None:  # nothing judged at this step (non-finite reference everywhere)
                for key in ("error", "bound", "error_ulp", "bound_ulp", "ratio", "where"):
                    out[key].append(None)
                out["max_ulp"].append(to_json(max_ulp))
                continue
            r, name, i, d, b, u1 = best
            out["error"].append(to_json(d))
            out["bound"].append(to_json(b))
            out["error_ulp"].append(to_json(d / u1))
            out["bound_ulp"].append(to_json(b / u1))
            out["max_ulp"].append(to_json(max_ulp))
            out["ratio"].append(to_json(r))
            out["where"].append(name + (str([int(k) for k in np.unravel_index(i, shape)]) if shape else ""))
    return out


def focus(record: dict[str, Any], observed: Trajectory, refs: References, dtype: str) -> tuple[str, tuple[int, ...]]:
    """The element whose trajectory the report draws: where the verdict first
    failed; else where the canonical rule first fails (what a known
    divergence looks like); else the largest error against its bound."""
    for key in ("against_expected", "against_canonical"):
        c = record.get(key) or {}
        if c.get("slot") and c.get("element") is not None and not c.get("ok", True):
            return c["slot"], tuple(c["element"])
    if "canonical" in refs.named and refs.declared != "canonical":
        c = compare(observed, refs.named["canonical"], dtype)
        if not c.ok and c.slot is not None:
            return c.slot, tuple(c.element or ())
    ref = refs.named[refs.declared]
    with np.errstate(all="ignore"):
        d = np.abs(observed.params - ref.values.params) / ref.bound.params
        d = np.where(np.isfinite(d), d, -1.0)
    flat = int(np.argmax(d.reshape(d.shape[0], -1).max(axis=0))) if d.size else 0
    shape = observed.params.shape[1:]
    return "p", tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def trajectory(case: Case, observed: Trajectory, refs: References, slot: str, element: tuple[int, ...]) -> dict[str, Any]:
    """One element's values after every step: framework, each reference, and
    the declared reference's bound; a parameter starts from its step-0 value."""

    def series(t: Trajectory) -> list[Any]:
        values = t.params if slot == "p" else t.state.get(slot)
        if values is None:
            return []
        return [to_json(float(v[element])) for v in values]

    initial = [to_json(float(case.params[element]))] if slot == "p" else None
    out: dict[str, Any] = {"slot": slot, "element": list(element), "start": 0 if slot == "p" else 1}
    out["framework"] = (initial or []) + series(observed)
    out["references"] = {name: (initial or []) + series(ref.values) for name, ref in refs.named.items()}
    declared = refs.named[refs.declared]
    out["bound"] = ([0.0] if slot == "p" else []) + series(declared.bound)
    return out


def case_evidence(spec: Spec, record: dict[str, Any]) -> dict[str, Any] | None:
    """Per-step errors against each reference and one element's trajectory,
    for a record that kept its case and the framework's values; None otherwise."""
    if "case" not in record or "observed" not in record:
        return None
    case = Case.from_dict(record["case"])
    observed = trajectories_from_json(record["observed"])
    refs = references(spec, record, case)
    slot, element = focus(record, observed, refs, case.dtype)
    return {
        "declared": refs.declared,
        "steps": {name: per_step(observed, ref, case.dtype) for name, ref in refs.named.items()},
        "trajectory": trajectory(case, observed, refs, slot, element),
    }
