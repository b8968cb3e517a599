"""Records: what one executed case and one run cell leave behind.

A `Record` is one executed case (a line of results.jsonl): its cell, its
outcome on the semantics axis, the verdict with its precision axis, the case
and what the framework computed. A `CellResult` is a cell's records with the
cell's own outcome on each axis. Both are frozen: what judged a case builds
it once, by keyword, and the driver marks its phase with `replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .case import Case
from .cells import Cell
from .compare import Verdict
from .jsonnum import to_json
from .outcomes import CRASH, FAILING, UNSUPPORTED, Outcome, worst, worst_precision
from .precision import PrecisionVerdict
from .tolerance import Trajectory

#: how a record's case came to be
FIXED, GENERATED, CROSS = "fixed", "generated", "cross"
#: the hypothesis phase of a generated case
GENERATE, SHRINK, MINIMAL = "generate", "shrink", "minimal"


@dataclass(frozen=True, kw_only=True)
class Record:
    """One executed case: what ran and what came out (a line of results.jsonl)."""

    cell: Cell
    outcome: Outcome
    reason: str = ""
    kind: str = GENERATED  # FIXED | GENERATED | CROSS (a cross cell's generated case)
    source: str | None = None  # the fixed case's file
    phase: str = GENERATE  # GENERATE | SHRINK | MINIMAL
    verdict: Verdict | None = None
    case: Case | None = None
    detail: str = ""
    seconds: float = 0.0
    framework_seconds: float = 0.0
    known_issue: str | None = None  # a declared framework error that this crash is (no verdict then)
    #: what the framework computed, kept with the case: the report's per-step
    #: error plots and trajectories are drawn from it against the reference
    observed: Trajectory | None = None
    first_side: Trajectory | None = None  # a cross cell's first side (observed is the second)
    identical: bool | None = None  # a cross cell's two sides bit for bit the same
    #: the sparse-vs-dense oracle: the two sides differ beyond the tolerance
    #: (as declared or not; the outcome says which)
    sides_differ: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))

    @property
    def precision(self) -> PrecisionVerdict | None:
        return self.verdict.precision if self.verdict is not None else None

    @property
    def failing(self) -> bool:
        """Fails by default: `diverges`, `crash`, or an undeclared precision finding."""
        return self.outcome in FAILING or (self.precision is not None and self.precision.failing)

    def fails(self, fail_on: frozenset[str] = frozenset()) -> bool:
        """Fails under `--fail-on` (outcome classes of either axis that fail besides the default ones)."""
        return self.failing or self.outcome in fail_on or (self.precision is not None and self.precision.outcome in fail_on)

    @property
    def margin(self) -> float:
        if self.verdict is None:
            return 0.0
        return self.verdict.against_expected.margin

    def to_json(self, with_case: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cell": self.cell.id,
            **self.cell.to_json(),
            "outcome": str(self.outcome),
            "reason": self.reason,
            "kind": self.kind,
            "phase": self.phase,
            "seconds": round(self.seconds, 6),
            "framework_seconds": round(self.framework_seconds, 6),
        }
        if self.source:
            out["source"] = self.source
        if self.known_issue:
            out["known_issue"] = self.known_issue
        if self.identical is not None:
            out["bit_identical"] = self.identical
        if self.sides_differ is not None:
            out["sides_differ"] = self.sides_differ
        if self.case is not None:
            out["steps"] = self.case.steps
            out["shape"] = list(self.case.shape)
            out["hyperparameters"] = self.case.hyperparameters
            out["lr_schedule"] = self.case.lr_schedule is not None
            if self.case.sparse_rows is not None:
                n = self.case.shape[0]
                out["sparse_steps"] = {
                    "empty": sum(not r for r in self.case.sparse_rows),
                    "all_rows": sum(len(set(r)) == n for r in self.case.sparse_rows),
                    "duplicates": sum(len(set(r)) != len(r) for r in self.case.sparse_rows),
                }
        if self.verdict is not None:
            out.update(self.verdict.to_json())
            if self.precision is not None:
                out["precision_outcome"] = self.precision.outcome
            v = out["against_expected"]
            for key in ("first_divergent_step", "max_abs_error", "max_rel_error", "max_ulp_error"):
                out[key] = v[key]
        if self.detail:
            out["detail"] = self.detail[-4000:]
        if with_case and self.case is not None:
            out["case"] = self.case.to_dict()
            if self.observed is not None:
                out["observed"] = trajectories_json(self.observed)
            if self.first_side is not None:
                out["first_side"] = trajectories_json(self.first_side)
        return out


def trajectories_json(t: Trajectory) -> dict[str, Any]:
    """Observed values as JSON data (exact floats; nan and inf as strings)."""
    return {"params": _plain(t.params), "state": {k: _plain(v) for k, v in t.state.items()}}


def trajectories_from_json(data: dict[str, Any]) -> Trajectory:
    def arr(x: Any) -> np.ndarray:
        return np.asarray(np.vectorize(float, otypes=[np.float64])(np.asarray(x, dtype=object)), dtype=np.float64)

    return Trajectory(arr(data["params"]), {k: arr(v) for k, v in (data.get("state") or {}).items()})


def _plain(a: np.ndarray) -> Any:
    a = np.asarray(a, dtype=np.float64)
    if np.isfinite(a).all():
        return a.tolist()
    return np.vectorize(to_json, otypes=[object])(a).tolist()  # (JSON has no inf or nan: strings)


@dataclass
class CellResult:
    """A cell's records as they come (the driver appends), and the cell's outcome on each axis."""

    cell: Cell
    records: list[Record] = field(default_factory=list)
    skipped: str | None = None  # the whole cell did not run, and why
    minimal: Record | None = None  # the shrunk failing case
    error: str | None = None  # hypothesis itself failed (health check, flaky)
    seconds: float = 0.0
    fail_on: frozenset[str] = frozenset()  # outcome classes that fail besides the default (`--fail-on`)

    @property
    def outcome(self) -> Outcome:
        """The semantics axis: the worst outcome of the cell's cases."""
        if self.error:
            return CRASH
        counted = [r.outcome for r in self.records if r.phase != SHRINK]
        if self.skipped or not counted:
            return UNSUPPORTED
        return worst(counted)

    @property
    def precision(self) -> str | None:
        """The precision axis: the worst precision outcome of the cell's cases (None: none judged)."""
        return worst_precision(r.precision.outcome for r in self.records if r.phase != SHRINK and r.precision is not None)

    @property
    def failed(self) -> bool:
        return self.outcome in FAILING or self.outcome in self.fail_on or any(
            r.fails(self.fail_on) for r in self.records if r.phase != SHRINK
        )
