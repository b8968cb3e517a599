"""One case through one cell: the adapter request, the host's answer, the verdict.

`execute` runs a case through a plain cell's framework mode and judges it on
both axes (semantics: `compare.classify`; precision: `precision.judge`);
cross cells run both sides through the same steps (`conformance/cross.py`).
Nothing here raises for a framework's fault: a crash, a hang or a malformed
answer is a record with that outcome.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from . import precision
from .case import Case
from .cells import Cell
from .compare import classify
from .tolerance import Reference, tolerance_for
from .dtypes import PRECISION, round_through, round_to
from .outcomes import CRASH, FAILING, KNOWN, UNSUPPORTED
from .precision import PrecisionVerdict
from .protocol import AdapterRequest, AdapterResult
from .records import Record
from .spec import ModeConfig, Spec
from .tolerance import Trajectory, shared_reference


def build_request(spec: Spec, mode: ModeConfig, case: Case) -> AdapterRequest:
    """The adapter's request: native constructor arguments and plain arrays."""
    hp = spec.resolve(case.hyperparameters)
    sparse = case.sparse_rows is not None
    return AdapterRequest(
        optimizer=mode.optimizer,
        args=mode.native_args(hp),
        mode=mode.mode,
        device=case.device,
        dtype=case.dtype,
        params=case.params,
        grads=case.grads,
        lr_arg=mode.lr_arg,
        lr_schedule=tuple(case.lr_schedule) if case.lr_schedule is not None else None,
        state=tuple(mode.state),
        sparse_rows=case.sparse_rows,
        # one slice per listed row (rows may repeat), for the native sparse form
        sparse_values=tuple(case.slices(i)[1] for i in range(case.steps)) if sparse else None,
        imports=mode.imports,
    )


def observed_trajectories(mode: ModeConfig, result: dict[str, Any], steps: int, shape: tuple[int, ...]) -> Trajectory:
    """The adapter's result in canonical names (a `-slot` mapping is negated back)."""
    return AdapterResult.from_wire(result, steps, shape).canonical(mode.state)


def stored_inputs(spec: Spec, mode: ModeConfig, case: Case) -> Case:
    """The case as the framework holds it: hyperparameters it stores narrower
    (`input_dtypes`, e.g. Keras' float32 learning-rate variable) rounded to
    that dtype, so the reference and the framework start from the same values.
    Rounding is idempotent, so a recorded case replays unchanged."""
    if not mode.input_dtypes:
        return case
    hp = spec.resolve(case.hyperparameters)
    given = dict(case.hyperparameters)
    schedule = case.lr_schedule
    for name, stages in mode.input_dtypes:
        value = hp.get(name)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating)):
            continue
        given[name] = round_through(value, stages, case.dtype)
        if name == "lr" and schedule is not None:
            schedule = tuple(round_through(x, stages, case.dtype) for x in schedule)
    if given == case.hyperparameters and schedule == case.lr_schedule:
        return case
    return replace(case, hyperparameters=given, lr_schedule=schedule)




def held_inputs(spec: Spec, mode: ModeConfig, case: Case) -> tuple[Case, dict[str, Any], str | None]:
    """The case as the framework holds it (`stored_inputs`), its resolved
    hyperparameters, and why the mode cannot run it (None: it can)."""
    held = stored_inputs(spec, mode, case)
    hp = spec.resolve(held.hyperparameters)
    return held, hp, skip_reason(mode, held, hp)


def skip_reason(mode: ModeConfig, case: Case, hp: dict[str, Any]) -> str | None:
    """Why this mode cannot run this case at all (an `unsupported` outcome), or None."""
    why = mode.unsupported_reason(hp, sparse=case.sparse_rows is not None)
    if why is None and case.lr_schedule is not None and mode.lr_arg is None:
        why = "this mode's learning rate cannot be set per step (no native argument maps to lr)"
    if why is None and mode.gradients == "sparse" and case.sparse_rows is None:
        why = f"{mode.optimizer} takes sparse gradients only; this case is dense"
    return why or _subnormal_input(mode, case, hp)


def _subnormal_input(mode: ModeConfig, case: Case, hp: dict[str, Any]) -> str | None:
    """A hyperparameter the framework stores narrower (`input_dtypes`) that is
    subnormal there: whether it survives depends on the framework's
    flush-to-zero mode (TensorFlow flushes on the CPU), so the case cannot say
    what the rule gives."""
    for name, stages in mode.input_dtypes:
        values = list(case.lr_schedule) if name == "lr" and case.lr_schedule is not None else [hp.get(name)]
        for value in values:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating)) or value == 0:
                continue
            for stage in stages:
                dtype = case.dtype if stage == "tensor" else stage
                if abs(value) <= 2.0 ** PRECISION[dtype][1]:
                    # At the smallest normal number itself, one step down (twice the
                    # relative step of a rounding elsewhere) is subnormal too: where a
                    # parser rounding the other way lands (MXNet reads wd = 2**-126 as
                    # 2**-126 - 2**-149, measured).
                    where = "subnormal in" if abs(value) < 2.0 ** PRECISION[dtype][1] else "the smallest normal number of"
                    return (
                        f"{name} = {value!r} is {where} {dtype}, where {mode.optimizer} stores it: whether it (or one"
                        " rounding step below it) is flushed to zero depends on the framework's flush-to-zero mode"
                    )
    # A hyperparameter below the normal range of the precision a framework may
    # compute with it in: float64 for a float64 case, float32 (the compute type of
    # float32, bfloat16 and float16 kernels) otherwise. Whether a kernel flushes it
    # to zero depends on the framework (TensorFlow and XLA flush on the CPU), and
    # where it meets a 0 (0 ** lr_power) it decides the value. (A float16 case's
    # eps = 1e-6, subnormal in float16 but not in float32, is judged.)
    compute = "float64" if case.dtype == "float64" else "float32"
    smallest = 2.0 ** PRECISION[compute][1]
    for name, value in hp.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating)) or value == 0:
            continue
        if abs(value) < smallest:
            return (f"{name} = {value!r} is subnormal in {compute}, where {mode.optimizer} may compute with it:"
                    " whether it is flushed to zero depends on the framework's flush-to-zero mode")
    return None


class _References:
    """The references one case is judged against, each computed once: the
    semantics axis and the precision axis often ask for the same one (a mode
    that declares no precision of its own), and so do other cells that draw
    the same case (`tolerance.shared_reference`)."""

    def __init__(self, spec: Spec, case: Case, held: Case, hyperparameter_dtype: str):
        self.spec, self.case, self.held, self.hd = spec, case, held, hyperparameter_dtype
        self.tol = tolerance_for(spec, case.dtype)

    def __call__(self, c: Case, variants: tuple[str, ...], hd: str) -> Reference:
        return shared_reference(self.spec, c, variants, self.tol, hd)

    def semantic(self, variants: tuple[str, ...]) -> Reference:
        return self(self.held, variants, self.hd)


def execute(spec: Spec, cell: Cell, case: Case, host: Any, *, timeout: float | None = None, fingerprint: bool = True) -> Record:
    """Run one case through the framework and judge it on both axes. Never
    raises for a framework's fault. The record keeps the user's
    hyperparameters; the framework and the semantics axis get them as the
    framework stores them (`stored_inputs`), the precision axis as given."""
    t0 = time.perf_counter()
    mode = spec.mode(cell.framework, cell.mode)
    held, hp, why = held_inputs(spec, mode, case)
    if why is not None:
        return Record(cell=cell, outcome=UNSUPPORTED, reason=why, case=case, seconds=time.perf_counter() - t0)
    answer = host.run(build_request(spec, mode, held), timeout)
    if answer.status == "unsupported":
        return Record(cell=cell, outcome=UNSUPPORTED, reason=answer.reason, case=case, seconds=time.perf_counter() - t0, framework_seconds=answer.seconds)
    sparse = case.sparse_rows is not None
    if answer.status != "ok":
        issue = None
        if not answer.reason.startswith("hung"):
            issue = mode.known_issue(cell.device, cell.dtype, hp, sparse=sparse, error=f"{answer.reason}\n{answer.detail or ''}")
        if issue is not None:  # a declared framework error (`raises`)
            return Record(cell=cell, outcome=KNOWN, reason=f"known issue: {issue.reason} ({answer.reason})", case=case, detail=answer.detail,
                          seconds=time.perf_counter() - t0, framework_seconds=answer.seconds, known_issue=issue.reason)
        return Record(cell=cell, outcome=CRASH, reason=answer.reason, case=case, detail=answer.detail, seconds=time.perf_counter() - t0, framework_seconds=answer.seconds)
    try:
        observed = observed_trajectories(mode, answer.result, case.steps, case.shape)
    except (KeyError, TypeError, ValueError) as exc:
        return Record(cell=cell, outcome=CRASH, reason=f"the adapter's answer is malformed: {exc}", case=case, seconds=time.perf_counter() - t0)
    expected = mode.sparse_expect(hp) if sparse else mode.expect
    known_issue = mode.known_issue(cell.device, cell.dtype, hp, sparse=sparse)
    refs = _References(spec, case, held, mode.hyperparameter_dtype)
    verdict = classify(
        spec, held, expected, observed,
        fingerprint=fingerprint, hyperparameter_dtype=mode.hyperparameter_dtype, known_issue=known_issue,
        references=refs.semantic,
    )
    found = _precision(spec, mode, case, held, expected, observed, verdict, known_issue, refs, fingerprint)
    verdict = replace(verdict, precision=found)
    if found.failing and verdict.outcome in FAILING and found.cause.startswith("undeclared"):
        verdict = replace(verdict, explanation=f"{verdict.explanation}; {found.cause}")
    return Record(
        cell=cell,
        outcome=verdict.outcome,
        reason=verdict.explanation,
        verdict=verdict,
        case=case,
        seconds=time.perf_counter() - t0,
        framework_seconds=answer.seconds,
        observed=observed,
    )


def _precision(spec, mode, case, held, expected, observed, verdict, known_issue, refs, fingerprint) -> PrecisionVerdict:
    ok = verdict.outcome not in FAILING
    found = precision.judge(spec, mode, case, held, expected, observed, semantics_ok=ok, known_issue=known_issue, ref_of=refs)
    if not ok and fingerprint and not verdict.fingerprint:
        model = precision.undeclared_model(spec, case, expected, observed)
        if model is not None:
            outcome = found.outcome if found.finding else precision.PRECISION_LOSS
            found = replace(found, outcome=outcome, declared=False,
                            cause=f"undeclared precision loss: the declared rule with {model} explains the observed values")
    return found


def retarget(case: Case, cell: Cell, mode: ModeConfig | None = None) -> Case | None:
    """A fixed (framework-neutral) case as a case of this cell: inputs rounded
    to its dtype, or None where it does not fit the cell's gradient kind.

    A dense cell gets a sparse case's gradients densified (unless its mode
    takes sparse gradients only); a sparse cell takes sparse cases only.
    """
    rows, values = case.sparse_rows, case.sparse_values
    if cell.sparse or (mode is not None and mode.gradients == "sparse"):
        if rows is None:
            return None
    elif rows is not None:
        rows = values = None
    with np.errstate(over="ignore"):
        params, grads = round_to(case.params, cell.dtype), round_to(case.grads, cell.dtype)
        values = tuple(round_to(v, cell.dtype) for v in values) if values is not None else None
    if not all(np.isfinite(x).all() for x in (params, grads, *(values or ()))):
        return None  # its inputs overflow this dtype (a float32 case's 6.8e5 in float16)
    return replace(
        case,
        sparse_rows=rows,
        sparse_values=values,
        framework=cell.framework,
        mode=cell.mode,
        device=cell.device,
        dtype=cell.dtype,
        variant=(),
        params=params,
        grads=grads,
    )


