"""The differential engine: cells, cases through adapters, verdicts, records.

A cell is one rule x framework x mode x device x dtype (`adam[torch-foreach-
cpu-float32]`). Running a cell runs its spec's fixed cases first (known
counterexamples pinned in the spec), then hypothesis-generated cases, each
through the framework's adapter and the reference kernel, and records every
executed case. The pytest plugin and `conformance run` both drive cells
through `run_cell`; neither knows anything about a particular framework.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed as hseed, settings as hsettings
from hypothesis.errors import HypothesisException

from . import strategies
from .case import Case
from .catalog import Catalog
from . import precision
from .compare import CRASH, FAILING, KNOWN, OUTCOMES, UNSUPPORTED, Reference, Trajectories, Verdict, _num, classify, tolerance_for
from .precision import PRECISION_OUTCOMES, PrecisionVerdict
from .dtypes import DTYPES, PRECISION, round_through, round_to
from .registry import FRAMEWORKS
from .tolerance import shared_reference
from .spec import ModeConfig, Spec


#: Gradient kinds of a cell: dense arrays, the framework's native sparse form
#: (rows x cols parameter, some rows per step), or the sparse-vs-dense oracle.
GRADIENTS = ("dense", "sparse", "sparse~dense")
#: Sparse cells run in these dtypes (what rows are touched does not depend on
#: the dtype; every dtype's arithmetic is covered by the dense cells), except
#: for modes that take sparse gradients only (torch SparseAdam): all of theirs.
SPARSE_DTYPES = ("float32", "float64")


@dataclass(frozen=True, order=True)
class Cell:
    rule: str
    framework: str
    mode: str
    device: str
    dtype: str
    gradients: str = "dense"
    #: the framework's environment: "" for the one the run uses (pinned),
    #: CANDIDATE for the candidate interpreter of a side-by-side run
    #: (`--candidate FRAMEWORK=PYTHON`), "pinned~candidate" for the two compared
    env: str = ""

    @property
    def id(self) -> str:
        return f"{self.rule}[{self.param_id}]"

    @property
    def param_id(self) -> str:
        base = f"{self.framework}-{self.mode}-{self.device}-{self.dtype}"
        base = base if self.gradients == "dense" else f"{base}-{self.gradients}"
        return f"{base}@{self.env}" if self.env else base

    @property
    def sparse(self) -> bool:
        return self.gradients != "dense"

    def to_json(self) -> dict[str, str]:
        out = {
            "rule": self.rule, "framework": self.framework, "mode": self.mode, "device": self.device,
            "dtype": self.dtype, "gradients": self.gradients,
        }
        if self.env:
            out["env"] = self.env
        return out


#: The environments of a side-by-side run: the run's own interpreter for a
#: framework and the candidate one (`--candidate FRAMEWORK=PYTHON`).
PINNED, CANDIDATE = "pinned", "candidate"


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


@dataclass(frozen=True)
class Selection:
    rules: tuple[str, ...] | None = None
    frameworks: tuple[str, ...] | None = None
    modes: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    gradients: tuple[str, ...] | None = None

    def keeps(self, cell: Cell) -> bool:
        return all(
            sel is None or value in sel
            for sel, value in (
                (self.rules, cell.rule),
                (self.frameworks, cell.framework),
                (self.modes, cell.mode),
                (self.devices, cell.device),
                (self.dtypes, cell.dtype),
                (self.gradients, cell.gradients),
            )
        )


def enumerate_cells(catalog: Catalog, selection: Selection = Selection(), candidates: Iterable[str] = ()) -> list[Cell]:
    """Every cell the specs define, filtered by `selection`, in a stable order.

    A framework in `candidates` runs side by side in two environments: each
    of its cells again as `@candidate` (judged against the reference like
    the pinned one), and each plain cell of one gradient kind as
    `@pinned~candidate`, the two environments compared on identical cases.
    """
    cells = _enumerate_cells(catalog, selection)
    candidates = set(candidates)
    if not candidates:
        return cells
    from .cross import SEP, is_cross

    targets = catalog.targets()
    out = []
    for cell in cells:
        out.append(cell)
        if cell.framework in candidates or targets.get(cell.framework) in candidates:
            out.append(replace(cell, env=CANDIDATE))
            if not is_cross(cell):
                out.append(replace(cell, env=f"{PINNED}{SEP}{CANDIDATE}"))
    return out


def _enumerate_cells(catalog: Catalog, selection: Selection) -> list[Cell]:
    from .cross import mode_pairs

    out = []
    for spec in catalog:
        # The sparse~dense oracle runs once per group of modes with one
        # configuration (torch forloop, not foreach; Keras eager, not function
        # or xla): the others are tied to it by the mode~mode cross-oracle and
        # checked against the reference in their own sparse cells.
        paired = {
            b
            for fw in {f for f, _ in spec.modes}
            for a, b in mode_pairs(spec, fw)
            if spec.mode(fw, a).sparse == spec.mode(fw, b).sparse  # (MXNet multi_precision is not lazy)
        }
        for (fw, mode_name), mode in spec.modes.items():
            devices = mode.devices or FRAMEWORKS[mode.runs_on].devices
            dtypes = mode.dtypes or tuple(DTYPES)
            sparse_only = mode.gradients == "sparse"
            kinds = ("sparse",) if sparse_only else GRADIENTS
            # (a mode without float32 and float64, e.g. float16 multi-precision, keeps its own)
            sparse_dtypes = [d for d in dtypes if d in SPARSE_DTYPES] or list(dtypes)
            for kind in kinds:
                for device in devices:
                    for dtype in dtypes:
                        if kind != "dense" and not sparse_only and dtype not in sparse_dtypes:
                            continue
                        if kind == "sparse~dense" and (mode.sparse.semantics == "unsupported" or mode_name in paired):
                            continue  # its sparse cell says why; or another mode of its group has the oracle
                        cell = Cell(spec.rule, fw, mode_name, device, dtype, kind)
                        if selection.keeps(cell):
                            out.append(cell)
        out.extend(_cross_cells(spec, selection))
    return sorted(out, key=lambda c: (c.rule, column_order(c.framework, catalog.targets()), c.mode, GRADIENTS.index(c.gradients), c.device, c.dtype))


def column_order(framework: str, targets: dict[str, str]) -> tuple[int, str]:
    """Frameworks in registry order, each user's target after the framework running it."""
    order = list(FRAMEWORKS)
    runs_on = targets.get(framework, framework)
    return (order.index(runs_on) if runs_on in order else len(order), "" if runs_on == framework else framework)


def _cross_cells(spec: Spec, selection: Selection) -> list[Cell]:
    """Cross-oracle cells (conformance/cross.py): mode against mode, cpu against
    each other device; kept when the selection keeps both sides."""
    from .cross import SEP, mode_pairs

    out = []
    frameworks = {fw for fw, _ in spec.modes}
    for fw in sorted(frameworks):
        for a, b in mode_pairs(spec, fw):
            ma, mb = spec.mode(fw, a), spec.mode(fw, b)
            for device in ma.devices or FRAMEWORKS[ma.runs_on].devices:
                if device not in (mb.devices or FRAMEWORKS[mb.runs_on].devices):
                    continue
                for dtype in ma.dtypes or tuple(DTYPES):
                    if dtype not in (mb.dtypes or tuple(DTYPES)):
                        continue
                    sides = (Cell(spec.rule, fw, a, device, dtype), Cell(spec.rule, fw, b, device, dtype))
                    if all(selection.keeps(c) for c in sides):
                        out.append(Cell(spec.rule, fw, f"{a}{SEP}{b}", device, dtype))
        for (f, name), mode in spec.modes.items():
            if f != fw or mode.gradients == "sparse":
                continue
            devices = mode.devices or FRAMEWORKS[mode.runs_on].devices
            for other in devices[1:]:
                for dtype in mode.dtypes or tuple(DTYPES):
                    sides = (Cell(spec.rule, fw, name, devices[0], dtype), Cell(spec.rule, fw, name, other, dtype))
                    crossed = Cell(spec.rule, fw, name, f"{devices[0]}{SEP}{other}", dtype)
                    # kept with both sides, or when the selection names it (--devices cuda,cpu~cuda:
                    # the GPU cells and their cpu twins' comparison, without every cpu cell)
                    if all(selection.keeps(c) for c in sides) or (selection.devices and selection.keeps(crossed)):
                        out.append(crossed)
    return out


def family(cell: Cell) -> tuple[str, str, str]:
    """The cells that draw the same cases at one seed and share their runs:
    a rule on one framework in one dtype (its modes, devices, gradient kinds
    and environments, plain and crossed)."""
    return (cell.rule, cell.framework, cell.dtype)


def shard(cells: Sequence[Cell], k: int, n: int) -> list[Cell]:
    """Shard K of N (1-based). A family (`family`) stays in one shard, so its
    cells share the framework runs and references of the cases they have in
    common (a cross cell's sides are its plain cells' runs); the families go
    largest first to the shard with the fewest cells (ties: the lowest
    shard), and a shard runs its families one after another. The split
    depends only on the set of cells selected, not on their order."""
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: K must be between 1 and N")
    families: dict[tuple[str, str, str], list[Cell]] = {}
    for cell in cells:
        families.setdefault(family(cell), []).append(cell)
    load = [0] * n
    mine: list[Cell] = []
    for key in sorted(families, key=lambda f: (-len(families[f]), zlib.crc32(repr(f).encode()), f)):
        target = min(range(n), key=lambda i: (load[i], i))
        load[target] += len(families[key])
        if target == k - 1:
            mine.extend(families[key])
    return mine


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N, e.g. 2/4; got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return k, n


# ---------------------------------------------------------------------------
# One case


@dataclass
class Record:
    """One executed case: what ran and what came out (a line of results.jsonl)."""

    cell: Cell
    outcome: str
    reason: str = ""
    kind: str = "generated"  # "fixed" | "generated"
    source: str | None = None  # the fixed case's file
    phase: str = "generate"  # "generate" | "shrink" | "minimal"
    verdict: Verdict | None = None
    case: Case | None = None
    detail: str = ""
    seconds: float = 0.0
    framework_seconds: float = 0.0
    known_issue: str | None = None  # a declared framework error that this crash is (no verdict then)
    #: what the framework computed, kept with the case: the report's per-step
    #: error plots and trajectories are drawn from it against the reference
    observed: Trajectories | None = None
    first_side: Trajectories | None = None  # a cross cell's first side (observed is the second)
    identical: bool | None = None  # a cross cell's two sides bit for bit the same

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
            "outcome": self.outcome,
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


def trajectories_json(t: Trajectories) -> dict[str, Any]:
    """Observed values as JSON data (exact floats; nan and inf as strings)."""
    return {"params": _plain(t.params), "state": {k: _plain(v) for k, v in t.state.items()}}


def trajectories_from_json(data: dict[str, Any]) -> Trajectories:
    def arr(x: Any) -> np.ndarray:
        return np.asarray(np.vectorize(float, otypes=[np.float64])(np.asarray(x, dtype=object)), dtype=np.float64)

    return Trajectories(arr(data["params"]), {k: arr(v) for k, v in (data.get("state") or {}).items()})


def _plain(a: np.ndarray) -> Any:
    a = np.asarray(a, dtype=np.float64)
    if np.isfinite(a).all():
        return a.tolist()
    return np.vectorize(_num, otypes=[object])(a).tolist()  # (JSON has no inf or nan: strings)


def build_request(spec: Spec, mode: ModeConfig, case: Case) -> dict[str, Any]:
    """The adapter's request: native constructor arguments and plain arrays."""
    hp = spec.resolve(case.hyperparameters)
    return {
        "optimizer": mode.optimizer,
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in mode.native_args(hp).items()},
        "mode": mode.mode,
        "device": case.device,
        "dtype": case.dtype,
        "params": case.params.copy(),  # an in-process adapter must not touch the case
        "grads": case.grads.copy(),
        "lr_arg": mode.lr_arg,
        "lr_schedule": list(case.lr_schedule) if case.lr_schedule is not None else None,
        "state": list(mode.state),
        "sparse_rows": [list(r) for r in case.sparse_rows] if case.sparse_rows is not None else None,
        # one slice per listed row (rows may repeat), for the native sparse form
        "sparse_values": [case.slices(i)[1] for i in range(case.steps)] if case.sparse_rows is not None else None,
        # a user's optimizer: the worker imports this module (the session has
        # checked that the user allowed it) and hands the adapter the object
        "import": mode.imports,
    }


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


def observed_trajectories(mode: ModeConfig, result: dict[str, Any], steps: int, shape: tuple[int, ...]) -> Trajectories:
    """The adapter's result in canonical names (a `-slot` mapping is negated back)."""
    params = np.asarray(result["params"], dtype=np.float64)
    if params.shape != (steps,) + shape:
        raise ValueError(f"the adapter returned parameters of shape {params.shape}, expected {(steps,) + shape}")
    state = {}
    for native, values in (result.get("state") or {}).items():
        canonical = mode.state.get(native)
        if canonical is None:
            continue
        a = np.asarray(values, dtype=np.float64)
        if canonical.startswith("-"):
            canonical, a = canonical[1:], -a
        state[canonical] = a
    return Trajectories(params, state)


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
    held = stored_inputs(spec, mode, case)
    hp = spec.resolve(held.hyperparameters)
    why = skip_reason(mode, held, hp)
    if why is not None:
        return Record(cell, UNSUPPORTED, why, case=case, seconds=time.perf_counter() - t0)
    answer = host.run(build_request(spec, mode, held), timeout)
    if answer.status == "unsupported":
        return Record(cell, UNSUPPORTED, answer.reason, case=case, seconds=time.perf_counter() - t0, framework_seconds=answer.seconds)
    sparse = case.sparse_rows is not None
    if answer.status != "ok":
        issue = None
        if not answer.reason.startswith("hung"):
            issue = mode.known_issue(cell.device, cell.dtype, hp, sparse=sparse, error=f"{answer.reason}\n{answer.detail or ''}")
        if issue is not None:  # a declared framework error (`raises`)
            return Record(cell, KNOWN, f"known issue: {issue.reason} ({answer.reason})", case=case, detail=answer.detail,
                          seconds=time.perf_counter() - t0, framework_seconds=answer.seconds, known_issue=issue.reason)
        return Record(cell, CRASH, answer.reason, case=case, detail=answer.detail, seconds=time.perf_counter() - t0, framework_seconds=answer.seconds)
    try:
        observed = observed_trajectories(mode, answer.result, case.steps, case.shape)
    except (KeyError, TypeError, ValueError) as exc:
        return Record(cell, CRASH, f"the adapter's answer is malformed: {exc}", case=case, seconds=time.perf_counter() - t0)
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
        cell,
        verdict.outcome,
        verdict.explanation,
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


# ---------------------------------------------------------------------------
# One cell


class CaseFailed(AssertionError):
    """Raised inside hypothesis for `diverges` and `crash`, so that it shrinks."""

    def __init__(self, record: Record):
        super().__init__(record.reason)
        self.record = record


@dataclass
class CellResult:
    cell: Cell
    records: list[Record] = field(default_factory=list)
    skipped: str | None = None  # the whole cell did not run, and why
    minimal: Record | None = None  # the shrunk failing case
    error: str | None = None  # hypothesis itself failed (health check, flaky)
    seconds: float = 0.0
    fail_on: frozenset[str] = frozenset()  # outcome classes that fail besides the default (`--fail-on`)

    @property
    def outcome(self) -> str:
        """The semantics axis: the worst outcome of the cell's cases."""
        if self.error:
            return CRASH
        counted = [r.outcome for r in self.records if r.phase != "shrink"]
        if self.skipped or not counted:
            return UNSUPPORTED
        return min(counted, key=OUTCOMES.index)

    @property
    def precision(self) -> str | None:
        """The precision axis: the worst precision outcome of the cell's cases (None: none judged)."""
        found = [r.precision.outcome for r in self.records if r.phase != "shrink" and r.precision is not None]
        return min(found, key=PRECISION_OUTCOMES.index) if found else None

    @property
    def failed(self) -> bool:
        return self.outcome in FAILING or self.outcome in self.fail_on or any(
            r.fails(self.fail_on) for r in self.records if r.phase != "shrink"
        )


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
    from functools import partial

    from .cross import execute_cross, is_cross, sides

    t0 = time.perf_counter()
    strategies.settle_local_constants()  # (so that a seed draws the same cases whatever ran before)
    result = CellResult(cell, fail_on=frozenset(fail_on))
    cross = is_cross(cell)
    first = sides(cell)[0] if cross else cell
    mode = spec.mode(first.framework, first.mode)
    run_one = partial(execute_cross, other_host=other_host) if cross else execute

    def keep(record: Record) -> None:
        result.records.append(record)
        if sink is not None:
            sink(record)

    side_hosts = ((sides(cell)[0], host), (sides(cell)[1], other_host or host)) if cross else ((cell, host),)
    for side, side_host in side_hosts:
        described = side_host.describe()
        if described.status != "ok":
            result.skipped = None
            where = f" ({side.env})" if side.env else ""
            keep(Record(cell, CRASH, f"the {cell.framework}{where} adapter cannot start: {described.reason}", detail=described.detail))
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
        record.kind, record.source = "fixed", path
        keep(record)

    state = {"failed": False, "hung": None}

    def check(case: Case) -> None:
        if state["hung"] is not None:
            # The framework hung on an earlier case of this cell; running
            # more would only wait out more timeouts.
            raise CaseFailed(replace(state["hung"], case=case, phase="shrink"))
        if cross:
            record = run_one(spec, cell, case, host, timeout=timeout)
        else:
            record = execute(spec, cell, case, host, timeout=timeout, fingerprint=not state["failed"])
        record.phase = "shrink" if state["failed"] else "generate"
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
            minimal = replace(failure.record, phase="minimal")
            if not cross and minimal.verdict is not None and not minimal.verdict.fingerprint and minimal.outcome != CRASH:
                # Shrink-phase records skip the fingerprint search; do it for the minimal case.
                minimal = execute(spec, cell, minimal.case, host, timeout=timeout)
                minimal.phase = "minimal"
            result.minimal = minimal
            keep(minimal)
        except HypothesisException as exc:
            result.error = f"hypothesis: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug of ours must not end the run either
            import traceback

            result.error = f"{type(exc).__name__}: {exc}"
            keep(Record(cell, CRASH, f"harness error: {result.error}", detail=traceback.format_exc()))
    result.seconds = time.perf_counter() - t0
    return result
