"""Cross-oracles: one framework against itself, with no reference in between.

The same case goes through two modes of one framework that claim the same
rule (torch forloop and fused, Keras eager and XLA, Optax eager and jit), or
through one mode on two devices (cpu and cuda/gpu). The two trajectories must
agree within the tolerance the reference kernel would allow the first one
(its error-aware bound for the variant the spec declares); a difference
beyond it is a divergence of its own, reported in a cell such as
`adam[tensorflow-eager~xla-cpu-float32]` or `adam[torch-fused-cpu~cuda-float32]`.
Whether the two were bit-identical is reported as well.

The sparse-vs-dense oracle (`adam[tensorflow-eager-cpu-float32-sparse~dense]`)
gives one framework mode the same gradients twice, once in its native sparse
form and once as a dense array. Where the spec declares the mode
dense-equivalent, the two must agree as above; where it declares a
sparse-only behaviour (lazy, or Keras' per-slice squares of a repeated row),
they must differ exactly when the reference's sparse and dense runs differ.

Only modes whose configuration is the same are paired (`cells.mode_pairs`).
Which cells are crossed is `conformance/cells.py`'s business; this module
runs and judges one case of one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from .case import Case
from .cells import Cell
from .compare import Verdict, compare
from .tolerance import Reference, tolerance_for
from .judging import build_request, held_inputs, observed_trajectories
from .outcomes import CONFORMS, CRASH, DIVERGES, KNOWN, UNSUPPORTED
from .records import CROSS, Record
from .spec import LAZY, ModeConfig, Spec
from .tolerance import Trajectory, shared_reference

#: sparse~dense: a declared difference beyond EDGE x the bound must show, one
#: below 1/EDGE x the bound must not; in between the case cannot tell
EDGE = 2.0


def execute_cross(spec: Spec, cell: Cell, case: Case, host: Any, *, timeout: float | None = None, other_host: Any = None) -> Record:
    """Run `case` through both sides of a cross cell and compare them (the
    second side on `other_host` where given: the candidate environment)."""
    t0 = time.perf_counter()
    first, second = cell.sides()
    left, right = cell.side_names()
    mode = spec.mode(first.framework, first.mode)
    case, hp, why = held_inputs(spec, mode, case)
    if why is not None:
        return Record(cell=cell, outcome=UNSUPPORTED, reason=why, case=case, seconds=time.perf_counter() - t0)
    sparse_dense = first.gradients != second.gradients
    if sparse_dense and case.sparse_rows is None:
        return Record(cell=cell, outcome=UNSUPPORTED, reason="the sparse-vs-dense oracle needs a sparse case", case=case, seconds=time.perf_counter() - t0)
    observed: list[Trajectory] = []
    spent = 0.0  # the two sides' framework time (0 for an answer the host remembered)
    for side, name, side_host in ((first, left, host), (second, right, other_host or host)):
        side_mode = spec.mode(side.framework, side.mode)
        side_case = replace(case, mode=side.mode, device=side.device)
        if side.gradients == "dense" and case.sparse_rows is not None:
            side_case = replace(side_case, sparse_rows=None, sparse_values=None)
        request = build_request(spec, side_mode, side_case)
        answer = side_host.run(request, timeout)
        spent += answer.seconds
        if answer.status != "ok":
            # A crash is reported by the side's own cell; here it only means
            # there is nothing to compare.
            status = "unsupported" if answer.status == "unsupported" else "crashed"
            where = f"{side.mode} on {side.device}" + (f" ({name})" if cell.crosses("env") else "")
            return Record(
                cell=cell,
                outcome=UNSUPPORTED,
                reason=f"{where} {status}: {answer.reason}",
                case=case,
                seconds=time.perf_counter() - t0,
                framework_seconds=spent,
            )
        try:
            observed.append(observed_trajectories(side_mode, answer.result, case.steps, case.shape))
        except (KeyError, TypeError, ValueError) as exc:
            return Record(cell=cell, outcome=CRASH, reason=f"the adapter's answer is malformed: {exc}", case=case,
                          seconds=time.perf_counter() - t0, framework_seconds=spent)
    a, b = observed
    tol = tolerance_for(spec, case.dtype)
    if sparse_dense:
        return replace(_sparse_dense(spec, cell, mode, case, a, b, tol, t0), framework_seconds=spent)
    ref = shared_reference(spec, case, mode.expect, tol, mode.hyperparameter_dtype)
    # The first side stands in for the reference, with the reference's bound.
    state = {k: v for k, v in a.state.items() if k in b.state}
    as_ref = Reference(mode.expect, Trajectory(a.params, state), ref.bound)
    result = compare(Trajectory(b.params, {k: b.state[k] for k in state}), as_ref, case.dtype)
    identical = _identical(a.params, b.params) and all(_identical(a.state[k], b.state[k]) for k in state)
    if result.ok:
        text = f"{left} and {right} agree " + ("bit for bit" if identical else f"within the tolerance (margin {result.margin:.2g})")
        outcome = CONFORMS
    else:
        text = (
            f"{left} and {right} differ beyond the tolerance: step {result.first_divergent_step}, {result.slot}"
            f"{list(result.element) if result.element else ''}: {result.observed_value!r} against {result.expected_value!r}"
            f" within {result.bound_value!r}"
        )
        outcome = DIVERGES
    issue = None
    for side in (first, second):
        issue = issue or spec.mode(side.framework, side.mode).known_issue(side.device, side.dtype, hp, sparse=case.sparse_rows is not None)
    if outcome == DIVERGES and issue is not None:
        outcome, text = KNOWN, f"known issue: {issue.reason} ({text})"
    verdict = Verdict(outcome, mode.expect, None, result, None, (), False, text, known_issue=issue.reason if issue and outcome == KNOWN else None)
    return Record(cell=cell, outcome=outcome, reason=text, kind=CROSS, verdict=verdict, case=case,
                  seconds=time.perf_counter() - t0, framework_seconds=spent, observed=b, first_side=a, identical=identical)


def _sparse_dense(spec: Spec, cell: Cell, mode: ModeConfig, case: Case, sparse: Trajectory, dense: Trajectory, tol: Any, t0: float) -> Record:
    """The sparse side against the dense side: the same where the spec declares
    the sparse path dense-equivalent (or where this case cannot tell), and
    different where the declared sparse behaviour differs for this case."""
    expect_sparse = mode.sparse_expect(spec.resolve(case.hyperparameters))
    expect_dense = tuple(v for v in mode.expect if v != LAZY.name)
    # The dense rule on the sparse case: the kernel's noise model then knows
    # the repeated rows, whose slices either side may add in its own order.
    ref_dense = shared_reference(spec, case, expect_dense, tol, mode.hyperparameter_dtype)
    state = {k: v for k, v in dense.state.items() if k in sparse.state}
    as_ref = Reference(expect_dense, Trajectory(dense.params, state), ref_dense.bound)
    result = compare(Trajectory(sparse.params, {k: sparse.state[k] for k in state}), as_ref, case.dtype)
    identical = _identical(sparse.params, dense.params) and all(_identical(sparse.state[k], dense.state[k]) for k in state)
    declared = [v for v in expect_sparse if v not in expect_dense] or ["dense-equivalent"]
    # How far the declared sparse rule is from the dense one on this case, in
    # units of the bound: beyond EDGE the two sides must differ, below 1/EDGE
    # they must agree; in between (a declared difference about the size of the
    # rounding bound: Keras' per-slice squares of a row listed as 1e6 and
    # -1.5625) either is rounding's call, and the case cannot tell.
    gap = 0.0
    if expect_sparse != expect_dense:
        ref_sparse = shared_reference(spec, case, expect_sparse, tol, mode.hyperparameter_dtype)
        # (judged on what the framework shows: a state slot it does not keep,
        # e.g. a momentum buffer at momentum 0, cannot make the two differ)
        shown = Trajectory(ref_sparse.values.params, {k: v for k, v in ref_sparse.values.state.items() if k in state})
        gap = compare(shown, ref_dense, case.dtype).margin
    should_differ = gap > EDGE
    at_edge = 1.0 / EDGE <= gap <= EDGE
    where = (
        f"step {result.first_divergent_step}, {result.slot}{list(result.element) if result.element else ''}:"
        f" {result.observed_value!r} against {result.expected_value!r} within {result.bound_value!r}"
    )
    if result.ok and not should_differ:
        outcome = CONFORMS
        text = "the sparse and the dense gradient give the same result " + (
            "bit for bit" if identical else f"within the tolerance (margin {result.margin:.2g})"
        )
        if declared != ["dense-equivalent"]:
            text += f" (this case does not tell {'+'.join(declared)} apart)"
    elif not result.ok and (should_differ or at_edge):
        outcome = CONFORMS
        text = f"the sparse gradient differs from the dense one, as declared ({'+'.join(declared)}; {where})"
        if at_edge:
            text += f" (the declared difference is {gap:.2g} of the bound here: the case cannot tell)"
    elif result.ok:
        outcome = DIVERGES
        text = f"the sparse gradient gives the dense result, but the spec declares {'+'.join(declared)}, which differs here"
    else:
        outcome = DIVERGES
        text = f"the sparse gradient differs from the dense one ({where}), " + (
            "but the spec declares it dense-equivalent" if declared == ["dense-equivalent"]
            else f"where the declared {'+'.join(declared)} gives the dense result for this case"
        )
    verdict = Verdict(outcome, expect_sparse, None, result, None, (), False, text)
    return Record(cell=cell, outcome=outcome, reason=text, kind=CROSS, verdict=verdict, case=case,
                  seconds=time.perf_counter() - t0, observed=sparse, first_side=dense,
                  identical=identical, sides_differ=not result.ok)  # (read by the summary's sparse table)


def _identical(x: np.ndarray, y: np.ndarray) -> bool:
    x, y = np.asarray(x), np.asarray(y)
    return x.shape == y.shape and bool(np.all((x == y) | (np.isnan(x) & np.isnan(y))))

