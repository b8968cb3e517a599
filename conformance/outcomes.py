"""The outcome classes of the two verdict axes, each ranked worst first.

The semantics axis says which rule a framework computed (`Outcome`); the
precision axis says what its arithmetic did to the numbers
(`PrecisionOutcome`). A cell shows the worst outcome of its cases on each
axis. The members are strings ("conforms", "precision-loss"), which is how
results, summaries and baselines store them; a new axis is a new enum here,
plus the places that display it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Iterable


class Outcome(StrEnum):
    """The semantics axis, worst first: a member's position is its rank."""

    CRASH = "crash"
    DIVERGES = "diverges"
    KNOWN = "known-divergence"
    CONFORMS = "conforms"
    UNSUPPORTED = "unsupported"

    @property
    def failing(self) -> bool:
        """Fails by default (whatever `--fail-on` adds)."""
        return self in FAILING

    @property
    def severity(self) -> int:
        """How bad a move to this outcome is between two runs (the gate):
        conforms and known-divergence alike (the rule is named either way),
        then unsupported (or not run), diverges, crash."""
        return _SEVERITY[self]


class PrecisionOutcome(StrEnum):
    """The precision axis, worst first."""

    NONFINITE = "nonfinite"
    STALLED = "stalled"
    PRECISION_LOSS = "precision-loss"
    EXACT = "exact"

    @property
    def finding(self) -> bool:
        """Anything but exact: a finding, declared or not."""
        return self is not PrecisionOutcome.EXACT


CRASH, DIVERGES, KNOWN, CONFORMS, UNSUPPORTED = Outcome
#: Outcomes from worst to best.
OUTCOMES = tuple(Outcome)
FAILING = frozenset({DIVERGES, CRASH})
_OUTCOME_RANK = {o: i for i, o in enumerate(Outcome)}
_SEVERITY = {CONFORMS: 0, KNOWN: 0, UNSUPPORTED: 1, DIVERGES: 2, CRASH: 3}

NONFINITE, STALLED, PRECISION_LOSS, EXACT = PrecisionOutcome
#: Precision outcomes from worst to best.
PRECISION_OUTCOMES = tuple(PrecisionOutcome)
FINDINGS = frozenset({NONFINITE, STALLED, PRECISION_LOSS})
_PRECISION_RANK = {o: i for i, o in enumerate(PrecisionOutcome)}

#: a cell that did not run (skipped: no GPU, framework absent), as the
#: report and the gate show it beside the outcomes
NOT_RUN = "not run"


def worst(outcomes: Iterable[str]) -> Outcome:
    """The worst of some semantics outcomes (UNSUPPORTED for none)."""
    found = [Outcome(o) for o in outcomes]
    return min(found, key=_OUTCOME_RANK.__getitem__) if found else UNSUPPORTED


def worst_precision(outcomes: Iterable[str]) -> PrecisionOutcome | None:
    """The worst of some precision outcomes (None for none judged)."""
    found = [PrecisionOutcome(o) for o in outcomes]
    return min(found, key=_PRECISION_RANK.__getitem__) if found else None


def severity(outcome: str) -> int:
    """`Outcome.severity` of a stored outcome; NOT_RUN counts as unsupported."""
    return UNSUPPORTED.severity if outcome == NOT_RUN else Outcome(outcome).severity
