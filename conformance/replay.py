"""Replay: one recorded case again, through the reference, a framework mode
or both sides of a cross cell, with what each computed.

`conformance replay case.json` and the report's "replay" buttons use this;
the case file says which cell it belongs to (`case_for`, the inverse, writes
a failing cell's minimal case so that it replays as that cell).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .case import Case
from .catalog import Catalog
from .cells import Cell
from .cross import execute_cross
from .execution import TargetHost, make_host
from .judging import execute, stored_inputs
from .kernel import run_case
from .records import Record, trajectories_json
from .registry import REFERENCE, availability, entry
from .session import target_host


def case_for(cell: Cell, case: Case) -> Case:
    """`case` as a case file of `cell`: its first side's mode and device, and
    the second side of a cross cell (the pinned and the candidate environment
    replay as one side, each under its interpreter)."""
    first = cell.first
    cross = cell.cross if cell.cross is not None and cell.cross.axis != "env" else None
    return replace(case, mode=first.mode, device=first.device, gradients=first.gradients if cross and cross.axis == "gradients" else None, cross=cross)


def replay_data(catalog: Catalog, case: Case, isolation: str = "worker", pythons: dict[str, str] | None = None,
                allow_import: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What `conformance replay --json` prints: the reference's trajectory for
    a reference case; a framework case's verdict with both trajectories."""
    spec = catalog.get(case.rule)
    for name in case.variant:
        spec.variant(name)
    if case.framework != REFERENCE:
        return replay_framework(catalog, case, isolation, pythons or {}, allow_import)
    traj = run_case(spec, case)
    out: dict[str, Any] = {
        "rule": case.rule,
        "framework": case.framework,
        "variant": list(case.variant),
        "mode": case.mode,
        "device": case.device,
        "dtype": case.dtype,
        "compute_dtype": "float64",
        "sparse_semantics": spec.sparse_semantics(case.variant),
        "hyperparameters": spec.resolve(case.hyperparameters),
        "steps": case.steps,
    }
    out.update(traj.to_json())
    return out


def cell_of_case(catalog: Catalog, case: Case) -> tuple[Cell, Case]:
    """The cell a framework case replays as, and the case with its framework's
    default mode (the first its section lists: torch forloop, Keras eager,
    Optax eager, MXNet updater) and device (the first: cpu) where it names none."""
    spec = catalog.get(case.rule)
    if case.mode is None or case.device is None:
        modes = [m for (fw, m) in spec.modes if fw == case.framework]
        if not modes:
            raise ValueError(f"rule {case.rule} has no {case.framework} section")
        runs_on = catalog.targets().get(case.framework, case.framework)
        case = replace(case, mode=case.mode or modes[0], device=case.device or entry(runs_on).devices[0])
    gradients = case.gradients or ("sparse" if case.sparse_rows is not None else "dense")
    return Cell(case.rule, case.framework, case.mode, case.device, case.dtype, gradients, cross=case.cross), case


def replay_framework(catalog: Catalog, case: Case, isolation: str, pythons: dict[str, str],
                     allow_import: frozenset[str] = frozenset()) -> dict[str, Any]:
    spec = catalog.get(case.rule)
    cell, case = cell_of_case(catalog, case)
    mode = spec.mode(case.framework, cell.mode)
    runs_on = mode.runs_on
    if runs_on not in pythons:
        a = availability(runs_on)
        if a.reason:
            raise ValueError(f"cannot replay on {case.framework}: {a.reason}")
    host = make_host(runs_on, "worker" if runs_on in pythons else isolation, pythons.get(runs_on))
    if runs_on != case.framework:  # a user's target: its module, if the user allows it
        try:
            host = target_host(catalog, case.framework, host, allow_import)
        except ValueError:
            host.close()
            raise
    try:
        record = execute_cross(spec, cell, case, host) if cell.is_cross else execute(spec, cell, case, host)
    finally:
        (host.host if isinstance(host, TargetHost) else host).close()
    ref = run_case(spec, stored_inputs(spec, mode, case), variants=mode.expect)
    return _framework_data(case, cell, spec.resolve(case.hyperparameters), mode.expect, record, ref.to_json())


def _framework_data(case: Case, cell: Cell, hp: dict[str, Any], expect: tuple[str, ...], record: Record, ref: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rule": case.rule,
        "framework": case.framework,
        "mode": cell.label("mode"),
        "device": cell.label("device"),
        "dtype": case.dtype,
        "hyperparameters": hp,
        "steps": case.steps,
        "outcome": str(record.outcome),
        "reason": record.reason,
        "expected_variant": "+".join(expect) or "canonical",
        "matched_variant": None,
        "first_divergent_step": None,
        "max_abs_error": None,
        "max_rel_error": None,
        "max_ulp_error": None,
        "reference_trajectory": ref["trajectory"],
        "reference_state": ref["state"],
        # what the framework computed: its parameters and readable state slots after every step
        "trajectory": None,
        "state": None,
        "failing": record.failing,
    }
    if cell.cross is not None:
        out["cross"] = cell.cross.to_json()
    if record.observed is not None:
        observed = trajectories_json(record.observed)
        out.update(trajectory=observed["params"], state=observed["state"])
    if record.first_side is not None:
        first = trajectories_json(record.first_side)
        out.update(first_side_trajectory=first["params"], first_side_state=first["state"])
    if record.precision is not None:
        out["precision"] = record.precision.to_json()
    if record.verdict is not None:
        v = record.verdict.to_json()
        e = v["against_expected"]
        out.update(
            matched_variant=v["matched_variant"],
            fingerprint=v["fingerprint"],
            stale=v["stale"],
            known_issue=v["known_issue"],
            first_divergent_step=e["first_divergent_step"],
            first_divergent_slot=e["slot"],
            first_divergent_element=e["element"],
            max_abs_error=e["max_abs_error"],
            max_rel_error=e["max_rel_error"],
            max_ulp_error=e["max_ulp_error"],
            margin=e["margin"],
        )
    if record.detail:
        out["detail"] = record.detail
    return out
