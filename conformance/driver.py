"""The hypothesis driver: one cell, its fixed cases, then generated ones.

Running a cell runs its spec's fixed cases first (known counterexamples
pinned in the spec), then hypothesis-generated cases, each through the
framework's adapter and the reference kernel (`judging.execute`, or
`cross.execute_cross` for a cross cell), and hands every executed case to a
sink as it comes. A failing case shrinks to the smallest one. The pytest
plugin and `conformance run` both drive cells through `run_cell`; neither
knows anything about a particular framework.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, seed as hseed, settings as hsettings
from hypothesis.errors import HypothesisException

from . import strategies
from .case import Case
from .cells import Cell
from .cross import execute_cross
from .judging import execute, retarget
from .outcomes import CRASH
from .records import FIXED, GENERATE, MINIMAL, SHRINK, CellResult, Record
from .spec import Spec


@dataclass(frozen=True)
class Profile:
    """How hard to look: examples per cell and the size of each case.

    A profile with a `seed` is derandomized: without `--seed` it always draws
    the same cases (hypothesis' `@seed`), and it neither reads nor writes
    hypothesis' example database, so a run fails only when something changed
    (the code, a spec, a framework). The others draw a random seed (printed)
    and replay the database's earlier failures first: exploration
    (`conformance explore`), whose counterexamples are pinned as fixed cases.
    """

    name: str
    max_examples: int
    max_steps: int = 20
    max_size: int = 32
    seed: int | None = None  # derandomized: the seed used when none is given

    @property
    def derandomized(self) -> bool:
        return self.seed is not None


PROFILES: dict[str, Profile] = {
    "ci": Profile("ci", max_examples=20, seed=0),
    "dev": Profile("dev", max_examples=60),
    "thorough": Profile("thorough", max_examples=400, max_steps=30, max_size=64),
}
DEFAULT_PROFILE = "ci"

#: hypothesis' settings for every cell (the examples and the database vary)
_SETTINGS: dict[str, Any] = dict(
    deadline=None,
    derandomize=False,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example, HealthCheck.filter_too_much],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)


class CaseFailed(AssertionError):
    """Raised inside hypothesis for `diverges` and `crash`, so that it shrinks."""

    def __init__(self, record: Record):
        super().__init__(record.reason)
        self.record = record


Sink = Callable[[Record], None]


def run_cell(
    spec: Spec,
    cell: Cell,
    host: Any,
    *,
    profile: Profile,
    seed: int,
    sink: Sink | None = None,
    examples: int | None = None,
    timeout: float | None = None,
    database: Any = "default",
    other_host: Any = None,
    fail_on: frozenset[str] = frozenset(),
) -> CellResult:
    """Fixed cases, then generated ones; failures shrink to the smallest case.
    A `pinned~candidate` cell runs its second side on `other_host`."""
    t0 = time.perf_counter()
    strategies.settle_local_constants()  # (so that a seed draws the same cases whatever ran before)
    run = _CellRun(spec, cell, host, other_host, sink, timeout, CellResult(cell, fail_on=frozenset(fail_on)))
    if run.can_start():
        run.fixed_cases()
        n = examples if examples is not None else profile.max_examples
        if n > 0:
            run.generated_cases(profile, seed, n, database)
    run.result.seconds = time.perf_counter() - t0
    return run.result


class _CellRun:
    """One cell's run: its hosts, its records as they come, and how one case runs."""

    def __init__(self, spec: Spec, cell: Cell, host: Any, other_host: Any, sink: Sink | None, timeout: float | None, result: CellResult):
        self.spec, self.cell, self.host, self.other_host = spec, cell, host, other_host
        self.sink, self.timeout, self.result = sink, timeout, result
        self.first = cell.first
        self.mode = spec.mode(self.first.framework, self.first.mode)

    def keep(self, record: Record) -> None:
        self.result.records.append(record)
        if self.sink is not None:
            self.sink(record)

    def run(self, case: Case, fingerprint: bool = True) -> Record:
        if self.cell.is_cross:
            return execute_cross(self.spec, self.cell, case, self.host, timeout=self.timeout, other_host=self.other_host)
        return execute(self.spec, self.cell, case, self.host, timeout=self.timeout, fingerprint=fingerprint)

    def can_start(self) -> bool:
        """Whether every side's adapter starts and has the device; if not, the
        cell is a crash (an adapter that cannot start) or skipped, with why."""
        cell = self.cell
        sides = tuple(zip(cell.sides(), (self.host, self.other_host or self.host))) if cell.is_cross else ((cell, self.host),)
        for side, side_host in sides:
            described = side_host.describe()
            if described.status != "ok":
                where = f" ({side.env})" if side.env else ""
                self.keep(Record(cell=cell, outcome=CRASH, reason=f"the {cell.framework}{where} adapter cannot start: {described.reason}",
                                 detail=described.detail))
                return False
            device = (described.result.get("devices") or {}).get(side.device) or {}
            if not device.get("available"):
                self.result.skipped = device.get("reason") or f"device {side.device} is not available to {cell.framework}"
                return False
        if cell.sparse and self.mode.sparse.semantics == "unsupported":
            self.result.skipped = self.mode.unsupported_reason({}, sparse=True)
            return False
        return True

    def fixed_cases(self) -> None:
        """The spec's pinned cases, as cases of this cell."""
        for path in self.spec.cases:
            case = retarget(Case.load(path), self.first, self.mode)
            if case is not None:
                self.keep(replace(self.run(case), kind=FIXED, source=path))

    def generated_cases(self, profile: Profile, seed: int, n: int, database: Any) -> None:
        """`n` hypothesis cases from `seed`; the first failure shrinks to a minimal case."""
        cell, result = self.cell, self.result
        state: dict[str, Any] = {"failed": False, "hung": None}

        def check(case: Case) -> None:
            if state["hung"] is not None:
                # The framework hung on an earlier case of this cell; running
                # more would only wait out more timeouts.
                raise CaseFailed(replace(state["hung"], case=case, phase=SHRINK))
            record = replace(self.run(case, fingerprint=not state["failed"]), phase=SHRINK if state["failed"] else GENERATE)
            self.keep(record)
            if record.fails(result.fail_on):
                if record.outcome == CRASH and record.reason.startswith("hung"):
                    state["hung"] = record
                state["failed"] = True
                raise CaseFailed(record)

        limits = strategies.Limits(profile.max_steps, profile.max_size)
        strategy = strategies.cases(self.spec, self.mode, device=self.first.device, dtype=cell.dtype, limits=limits, sparse=cell.sparse)
        settings = dict(_SETTINGS, max_examples=n)
        if database != "default":
            settings["database"] = database
        elif profile.derandomized:
            settings["database"] = None  # no replay of another run's failures: the same cases every run
        test = hseed(seed)(hsettings(**settings)(given(strategy)(check)))
        # Each cell keeps its own entries in the example database.
        test.hypothesis.inner_test._hypothesis_internal_add_digest = cell.id.encode()
        try:
            test()
        except CaseFailed as failure:
            minimal = replace(failure.record, phase=MINIMAL)
            if not cell.is_cross and minimal.verdict is not None and not minimal.verdict.fingerprint and minimal.outcome != CRASH:
                # Shrink-phase records skip the fingerprint search; do it for the minimal case.
                minimal = replace(self.run(minimal.case), phase=MINIMAL)
            result.minimal = minimal
            self.keep(minimal)
        except HypothesisException as exc:
            result.error = f"hypothesis: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug of ours must not end the run either
            result.error = f"{type(exc).__name__}: {exc}"
            self.keep(Record(cell=cell, outcome=CRASH, reason=f"harness error: {result.error}", detail=traceback.format_exc()))
