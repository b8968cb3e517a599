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
from functools import partial
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



# ---------------------------------------------------------------------------
# One cell


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
    result = CellResult(cell, fail_on=frozenset(fail_on))
    cross = cell.is_cross
    first = cell.first
    mode = spec.mode(first.framework, first.mode)
    run_one = partial(execute_cross, other_host=other_host) if cross else execute

    def keep(record: Record) -> None:
        result.records.append(record)
        if sink is not None:
            sink(record)

    side_hosts = tuple(zip(cell.sides(), (host, other_host or host))) if cross else ((cell, host),)
    for side, side_host in side_hosts:
        described = side_host.describe()
        if described.status != "ok":
            result.skipped = None
            where = f" ({side.env})" if side.env else ""
            keep(Record(cell=cell, outcome=CRASH, reason=f"the {cell.framework}{where} adapter cannot start: {described.reason}", detail=described.detail))
            result.seconds = time.perf_counter() - t0
            return result
        device = (described.result.get("devices") or {}).get(side.device) or {}
        if not device.get("available"):
            result.skipped = device.get("reason") or f"device {side.device} is not available to {cell.framework}"
            result.seconds = time.perf_counter() - t0
            return result

    if cell.sparse and mode.sparse.semantics == "unsupported":
        result.skipped = mode.unsupported_reason({}, sparse=True)
        result.seconds = time.perf_counter() - t0
        return result

    for path in spec.cases:
        case = retarget(Case.load(path), first, mode)
        if case is None:
            continue
        record = run_one(spec, cell, case, host, timeout=timeout)
        keep(replace(record, kind=FIXED, source=path))

    state = {"failed": False, "hung": None}

    def check(case: Case) -> None:
        if state["hung"] is not None:
            # The framework hung on an earlier case of this cell; running
            # more would only wait out more timeouts.
            raise CaseFailed(replace(state["hung"], case=case, phase=SHRINK))
        if cross:
            record = run_one(spec, cell, case, host, timeout=timeout)
        else:
            record = execute(spec, cell, case, host, timeout=timeout, fingerprint=not state["failed"])
        record = replace(record, phase=SHRINK if state["failed"] else GENERATE)
        keep(record)
        if record.fails(result.fail_on):
            if record.outcome == CRASH and record.reason.startswith("hung"):
                state["hung"] = record
            state["failed"] = True
            raise CaseFailed(record)

    n = examples if examples is not None else profile.max_examples
    limits = strategies.Limits(profile.max_steps, profile.max_size)
    strategy = strategies.cases(spec, mode, device=first.device, dtype=cell.dtype, limits=limits, sparse=cell.sparse)
    kwargs: dict[str, Any] = dict(
        max_examples=max(n, 1),
        deadline=None,
        derandomize=False,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example, HealthCheck.filter_too_much],
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    )
    if database != "default":
        kwargs["database"] = database
    elif profile.derandomized:
        kwargs["database"] = None  # no replay of another run's failures: the same cases every run
    test = hseed(seed)(hsettings(**kwargs)(given(strategy)(check)))
    # Each cell keeps its own entries in the example database.
    test.hypothesis.inner_test._hypothesis_internal_add_digest = cell.id.encode()
    if n > 0:
        try:
            test()
        except CaseFailed as failure:
            minimal = replace(failure.record, phase=MINIMAL)
            if not cross and minimal.verdict is not None and not minimal.verdict.fingerprint and minimal.outcome != CRASH:
                # Shrink-phase records skip the fingerprint search; do it for the minimal case.
                minimal = replace(execute(spec, cell, minimal.case, host, timeout=timeout), phase=MINIMAL)
            result.minimal = minimal
            keep(minimal)
        except HypothesisException as exc:
            result.error = f"hypothesis: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug of ours must not end the run either
            result.error = f"{type(exc).__name__}: {exc}"
            keep(Record(cell=cell, outcome=CRASH, reason=f"harness error: {result.error}", detail=traceback.format_exc()))
    result.seconds = time.perf_counter() - t0
    return result
