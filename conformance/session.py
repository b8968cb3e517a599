"""A conformance session: the options, the hosts, the results, shared by CLI and pytest.

One option table serves `conformance run` and the pytest plugin (as
pytest-benchmark's `add_global_options` does), so the two select and run
cells the same way. A session owns one adapter host per framework (a worker
process by default), the run's seed and profile, and the results writer.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .catalog import Catalog
from .defaults import measure as measure_defaults
from .execution import DEFAULT_TIMEOUT, TargetHost, WorkerHost, make_host
from .registry import FRAMEWORKS, availability, worker_python
from .results import ResultWriter, environment, write_cell_status, write_environment
from .cells import CANDIDATE, GRADIENTS, Cell, Selection, enumerate_cells, parse_shard, shard
from .driver import DEFAULT_PROFILE, PROFILES, Profile, run_cell
from .records import CellResult
from .strategies import DRAW_SCHEME


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


#: (CLI flag, pytest flag, argparse keyword arguments). pytest's flags are
#: prefixed where a bare name would be ambiguous among plugins.
OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--rules", "--rules", dict(dest="rules", metavar="LIST", help="comma-separated rules (default: all)")),
    ("--frameworks", "--frameworks", dict(dest="frameworks", metavar="LIST", help="comma-separated frameworks (default: all with an adapter)")),
    ("--modes", "--modes", dict(dest="modes", metavar="LIST", help="comma-separated modes, e.g. forloop,fused")),
    ("--devices", "--devices", dict(dest="devices", metavar="LIST", help="comma-separated devices, e.g. cpu,cuda")),
    ("--dtypes", "--dtypes", dict(dest="dtypes", metavar="LIST", help="comma-separated dtypes: float16,bfloat16,float32,float64")),
    ("--gradients", "--gradients", dict(dest="gradients", metavar="LIST", help="comma-separated gradient kinds: dense, sparse, sparse~dense (default: all)")),
    ("--examples", "--examples", dict(dest="examples", type=int, metavar="N", help="generated cases per cell (default: the profile's)")),
    ("--profile", "--conformance-profile", dict(dest="conformance_profile", default=None, choices=sorted(PROFILES), help="hypothesis profile: ci (default), dev or thorough")),
    ("--seed", "--conformance-seed", dict(dest="conformance_seed", type=lambda v: v if v == "last" else int(v), metavar="N|last", help="hypothesis seed (default: the ci profile's fixed seed 0, so CI draws the same cases every run; random, printed, for the dev and thorough profiles); last: the previous run's seed here")),
    ("--shard", "--shard", dict(dest="shard", metavar="K/N", help="run only shard K of N (cells split by a hash of their id)")),
    ("--max-steps", "--max-steps", dict(dest="max_steps", type=int, metavar="N", help="most optimizer steps per case (default 20)")),
    ("--max-size", "--max-size", dict(dest="max_size", type=int, metavar="N", help="most elements per tensor (default 32)")),
    ("--isolation", "--isolation", dict(dest="isolation", choices=("worker", "inprocess"), default=None, help="run adapters in worker processes (default) or in this process")),
    ("--python", "--conformance-python", dict(dest="python", action="append", default=None, metavar="FRAMEWORK=PYTHON", help="run FRAMEWORK's worker under this interpreter (repeatable)")),
    ("--candidate", "--conformance-candidate", dict(dest="candidate", action="append", default=None, metavar="FRAMEWORK=PYTHON", help="side by side: also run FRAMEWORK's cells under this interpreter (a candidate version) and compare the two on identical cases (repeatable)")),
    ("--fail-on", "--fail-on", dict(dest="fail_on", metavar="LIST", help="outcome classes that fail besides diverges, crash and undeclared precision findings, e.g. precision-loss,nonfinite,stalled (either axis)")),
    ("--allow-import", "--allow-import", dict(dest="allow_import", action="append", default=None, metavar="PACKAGE", help="let a user's spec (--specs) run an optimizer of PACKAGE, a third-party or in-house module: importing it runs its code, so nothing is imported without this (repeatable)")),
    ("--timeout", "--conformance-timeout", dict(dest="timeout", type=float, metavar="SECONDS", help=f"per-case timeout (default {DEFAULT_TIMEOUT:g})")),
]


def parse_pythons(items: list[str] | None, flag: str = "--python") -> dict[str, str]:
    """`--python FRAMEWORK=PYTHON` values as {framework: interpreter}."""
    out = {}
    for item in items or ():
        fw, sep, path = item.partition("=")
        if not sep or fw not in FRAMEWORKS or not path:
            raise ValueError(f"{flag} takes FRAMEWORK=PYTHON with FRAMEWORK one of {', '.join(FRAMEWORKS)}; got {item!r}")
        out[fw] = path
    return out


def parse_frameworks(text: str | None, targets: Iterable[str] = ()) -> tuple[str, ...] | None:
    """`--frameworks LIST`, each name a framework of the registry or one of
    `targets` (users' targets in the loaded specs); None: all."""
    if text is None:
        return None
    frameworks = _csv(text)
    known = list(FRAMEWORKS) + sorted(set(targets) - set(FRAMEWORKS))
    for fw in frameworks:
        if fw not in known:
            raise ValueError(f"unknown framework {fw!r} (known: {', '.join(known)})")
    return frameworks


#: What `--fail-on` can name: outcomes of the semantics axis and of the precision axis.
FAIL_ON_CLASSES = ("known-divergence", "unsupported", "precision-loss", "nonfinite", "stalled")


def parse_fail_on(text: str | None) -> frozenset[str]:
    """`--fail-on LIST` (diverges and crash always fail; naming them is allowed)."""
    if not text:
        return frozenset()
    out = set(_csv(text))
    unknown = out - set(FAIL_ON_CLASSES) - {"diverges", "crash"}
    if unknown:
        raise ValueError(f"--fail-on: unknown outcome class {', '.join(sorted(unknown))!r} (known: {', '.join(FAIL_ON_CLASSES)}, diverges, crash)")
    return frozenset(out)


def discover_pythons(pythons: dict[str, str]) -> dict[str, str]:
    """`pythons`, plus a worker interpreter for each framework that is not
    importable here but has an environment of its own (registry.worker_python:
    CONFORMANCE_PYTHON_MXNET, .venv-mxnet, .tox/mxnet-worker)."""
    found = dict(pythons)
    for fw in FRAMEWORKS:
        if fw not in found and not availability(fw).installed:
            python = worker_python(fw)
            if python is not None:
                found[fw] = python
    return found


#: where a run records its seed, for `--seed last` (as pytest-randomly replays its last seed)
LAST_SEED = Path(".conformance") / "last-seed"


def last_seed(path: Path = LAST_SEED) -> int:
    try:
        return int(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        raise ValueError(f"--seed last: no earlier run here recorded its seed ({path} is missing or unreadable)") from None


def remember_seed(seed: int, path: Path = LAST_SEED) -> None:
    """Record a run's seed for `--seed last` (a run that cannot write it still runs)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{seed}\n", encoding="utf-8")
    except OSError:
        pass


def add_options(add: Callable[..., Any], pytest: bool = False) -> None:
    for cli, py, kwargs in OPTIONS:
        add(py if pytest else cli, **kwargs)


def option_argv(namespace: Any, leave: Iterable[str] = ()) -> list[str]:
    """The CLI arguments that give a child process the same OPTIONS as
    `namespace` (parsed by `add_options`), except the flags in `leave`."""
    argv: list[str] = []
    for cli, _, kwargs in OPTIONS:
        if cli in leave:
            continue
        value = getattr(namespace, kwargs["dest"], None)
        if value is None:
            continue
        for v in value if kwargs.get("action") == "append" else [value]:
            argv += [cli, str(v)]
    return argv


def target_host(catalog: Catalog, target: str, host: Any, allow_import: frozenset[str]) -> TargetHost:
    """A user's target on its framework's `host`, importing its modules, each
    of which the user must have allowed (else an error that says how)."""
    modules = tuple(sorted(catalog.imports([target])))
    refused = [m for m in modules if m not in allow_import]
    if refused:
        raise ValueError(f"{target} runs {', '.join(refused)}'s code: allow it with " + " ".join(f"--allow-import {m}" for m in refused))
    return TargetHost(target, host, modules)


@dataclass
class Options:
    selection: Selection = field(default_factory=Selection)
    profile: Profile = field(default_factory=lambda: PROFILES[DEFAULT_PROFILE])
    examples: int | None = None
    seed: int = 0
    shard: tuple[int, int] | None = None
    isolation: str = "worker"
    pythons: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    #: side by side: a candidate interpreter per framework (`--candidate`)
    candidates: dict[str, str] = field(default_factory=dict)
    #: outcome classes that fail besides the default ones (`--fail-on`)
    fail_on: frozenset[str] = frozenset()
    #: top-level modules of users' optimizers that may be imported (`--allow-import`)
    allow_import: frozenset[str] = frozenset()

    @classmethod
    def from_namespace(cls, ns: Any, seed: int | None = None) -> "Options":
        def get(name: str) -> Any:
            return getattr(ns, name, None)

        profile = PROFILES[get("conformance_profile") or DEFAULT_PROFILE]
        if get("max_steps") or get("max_size"):
            profile = Profile(profile.name, profile.max_examples, get("max_steps") or profile.max_steps, get("max_size") or profile.max_size, profile.seed)
        pythons = discover_pythons(parse_pythons(get("python")))
        sel = Selection(*(None if get(k) is None else _csv(get(k)) for k in ("rules", "frameworks", "modes", "devices", "dtypes", "gradients")))
        for kind in sel.gradients or ():
            if kind not in GRADIENTS:
                raise ValueError(f"unknown gradient kind {kind!r} (known: {', '.join(GRADIENTS)})")
        chosen_seed = get("conformance_seed")
        if chosen_seed == "last":
            chosen_seed = last_seed()
        if chosen_seed is None:
            # a derandomized profile (ci) has its fixed seed; the others draw one
            chosen_seed = seed if seed is not None else profile.seed if profile.derandomized else random.SystemRandom().randrange(2**32)
        return cls(
            selection=sel,
            profile=profile,
            examples=get("examples"),
            seed=chosen_seed,
            shard=parse_shard(get("shard")) if get("shard") else None,
            isolation=get("isolation") or "worker",
            pythons=pythons,
            timeout=get("timeout"),
            candidates=parse_pythons(get("candidate"), "--candidate"),
            fail_on=parse_fail_on(get("fail_on")),
            allow_import=frozenset(m.strip() for item in get("allow_import") or () for m in item.split(",") if m.strip()),
        )

    def with_default_frameworks(self, catalog: Catalog) -> None:
        """Check the chosen frameworks and users' targets against the registry
        and `catalog`; none chosen: every framework that has an adapter in this
        version and every target of the loaded specs. A target whose module the
        user did not allow (`--allow-import`) is an error, never an import."""
        targets = catalog.targets()
        parse_frameworks(",".join(self.selection.frameworks) if self.selection.frameworks is not None else None, targets)
        if self.selection.frameworks is None:
            frameworks = tuple(fw for fw in FRAMEWORKS if availability(fw).adapter)
            frameworks += tuple(t for t, fw in sorted(targets.items()) if fw in frameworks)
            self.selection = Selection(**{**vars(self.selection), "frameworks": frameworks})
        refused = {m: where for m, where in catalog.imports(self.selection.frameworks, self.selection.rules).items() if m not in self.allow_import}
        if refused:
            lines = [f"  {m}: named by {'; '.join(where)}" for m, where in sorted(refused.items())]
            raise ValueError(
                "a spec names optimizers outside the frameworks; importing a module runs its code, so it needs your"
                f" leave: add {' '.join('--allow-import ' + m for m in sorted(refused))} (or leave these targets"
                " out with --frameworks)\n" + "\n".join(lines)
            )

    def to_json(self) -> dict[str, Any]:
        s = self.selection
        return {
            "profile": self.profile.name,
            "max_examples": self.examples if self.examples is not None else self.profile.max_examples,
            "max_steps": self.profile.max_steps,
            "max_size": self.profile.max_size,
            "seed": self.seed,
            "draw": DRAW_SCHEME,
            "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
            "isolation": self.isolation,
            "selection": {k: list(v) if v else None for k, v in vars(s).items()},
            "candidates": dict(self.candidates),
            "fail_on": sorted(self.fail_on),
            "allow_import": sorted(self.allow_import),
        }


class Session:
    def __init__(self, catalog: Catalog, options: Options, out: str | Path | None = None, writer_name: str = "main"):
        self.catalog = catalog
        self.options = options
        self.out = Path(out) if out is not None else None
        self.writer = ResultWriter(self.out, writer_name) if self.out is not None else None
        self.writer_name = writer_name
        self._hosts: dict[str, Any] = {}
        self._described: dict[str, dict[str, Any]] = {}
        self._started = time.time()
        self._environment: dict[str, Any] | None = None
        self.on_record: Any = None  # called with each record as it is written (progress)

    def cells(self) -> list[Cell]:
        cells = enumerate_cells(self.catalog, self.options.selection, self.options.candidates)
        # (one shard: the cells grouped by family, so that those drawing the same cases run together)
        return shard(cells, *(self.options.shard or (1, 1)))

    def runs_on(self, framework: str) -> str:
        """The registered framework whose adapter runs a column (a user's target's, or itself)."""
        return self.catalog.targets().get(framework, framework)

    def unavailable(self, framework: str, env: str = "") -> str | None:
        """Why a framework cannot run at all here (None if it can be tried)."""
        framework = self.runs_on(framework)
        if framework in self.options.pythons or env == CANDIDATE:
            return None
        a = availability(framework)
        return a.reason

    def host(self, framework: str, env: str = "") -> Any:
        """The framework's adapter host: its worker under the run's interpreter,
        or under the candidate interpreter (`env` CANDIDATE). A user's target
        shares the host of the framework that runs it."""
        runs_on = self.runs_on(framework)
        if runs_on != framework:
            key = f"{framework}@{env}" if env else framework
            if key not in self._hosts:  # (with_default_frameworks refuses a run that would need leave first)
                self._hosts[key] = target_host(self.catalog, framework, self.host(runs_on, env), self.options.allow_import)
            return self._hosts[key]
        key = framework if not env else f"{framework}@{env}"
        if key not in self._hosts:
            if env == CANDIDATE:
                self._hosts[key] = make_host(framework, "worker", self.options.candidates[framework])
            else:
                isolation = "worker" if framework in self.options.pythons else self.options.isolation
                self._hosts[key] = make_host(framework, isolation, self.options.pythons.get(framework))
        return self._hosts[key]

    def describe(self, framework: str, env: str = "") -> dict[str, Any]:
        key = framework if not env else f"{framework}@{env}"
        if key not in self._described:
            why = self.unavailable(framework, env)
            if why is not None:
                self._described[key] = {"available": False, "reason": why}
            else:
                host = self.host(framework, env)
                answer = host.describe()
                if answer.status == "ok":
                    self._described[key] = {
                        "available": True,
                        **answer.result,
                        "python": host.python,
                        "isolation": host.isolation,
                        "defaults": self.measure_defaults(framework, env),
                    }
                    if env:
                        self._described[key]["env"] = env
                elif isinstance(host, TargetHost) and self.describe(self.runs_on(framework), env).get("available"):
                    # the framework runs, the user's module does not import: its
                    # cells are `crash` with this reason (run_cell), not skipped
                    self._described[key] = {"available": True, "target_of": self.runs_on(framework), "import_error": answer.reason, "detail": answer.detail}
                else:
                    self._described[key] = {"available": False, "reason": answer.reason, "detail": answer.detail}
        return self._described[key]

    def measure_defaults(self, framework: str, env: str = "") -> list[dict[str, Any]]:
        """The framework's own default hyperparameters for the selected rules (introspected)."""
        rules = self.options.selection.rules
        specs = [spec for spec in self.catalog if rules is None or spec.rule in rules]
        return measure_defaults(specs, framework, self.host(framework, env).defaults)

    def write_environment(self, frameworks: list[str]) -> dict[str, Any]:
        described = {fw: self.describe(fw) for fw in frameworks}
        for fw in frameworks:
            if fw in self.options.candidates:
                described[f"{fw}@{CANDIDATE}"] = self.describe(fw, CANDIDATE)
        env = environment(self.options.to_json(), described)
        if self.out is not None:
            write_environment(self.out, self.writer_name, env)
            self._environment = env
        return env

    def run_cell(self, cell: Cell) -> CellResult:
        envs = tuple(side.env for side in cell.sides()) if cell.crosses("env") else (cell.env,)
        missing = [(env, info) for env in envs for info in [self.describe(cell.framework, env)] if not info.get("available")]
        if missing:
            env, info = missing[0]
            result = CellResult(cell, skipped=f"{cell.framework}{'@' + env if env else ''}: {info.get('reason')}")
        else:
            spec = self.catalog.get(cell.rule)
            result = run_cell(
                spec,
                cell,
                self.host(cell.framework, envs[0]),
                other_host=self.host(cell.framework, CANDIDATE) if len(envs) == 2 else None,
                profile=self.options.profile,
                seed=self.options.seed,
                sink=self._sink,
                examples=self.options.examples,
                timeout=self.options.timeout,
                fail_on=self.options.fail_on,
            )
        if result.skipped and self.writer is not None:
            write_cell_status(self.writer, cell, "skipped", result.skipped)
        return result

    def _sink(self, record: Any) -> None:
        if self.writer is not None:
            self.writer.write(record)
        if self.on_record is not None:
            self.on_record(record)

    def close(self) -> None:
        for host in self._hosts.values():
            host.close()
        if self.writer is not None:
            self.writer.close()
        if self._environment is not None and self.out is not None:
            # the run's duration, for the report's environment section
            self._environment["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            self._environment["duration_s"] = round(time.time() - self._started, 1)
            write_environment(self.out, self.writer_name, self._environment)
            self._environment = None


def broken_workers(options: Options) -> str | None:
    """An environment that cannot start its worker is one clear error before
    any cell runs: which interpreter, the tail of its stderr, how to rebuild it
    (instead of every cell of that framework skipped as 'worker died')."""

    selected = set(options.selection.frameworks or FRAMEWORKS)
    envs = [(fw, python, "") for fw, python in options.pythons.items() if fw in selected]
    envs += [(fw, python, " (--candidate)") for fw, python in options.candidates.items() if fw in selected]
    problems = []
    for fw, python, what in envs:
        host = WorkerHost(fw, python=python)
        try:
            answer = host.describe()
        finally:
            host.close()
        if answer.status != "ok":
            tail = "\n".join("    " + line for line in (answer.detail or "").strip().splitlines()[-12:])
            problems.append(
                f"error: the {fw} worker environment{what} cannot start a worker: {python}\n  {answer.reason}"
                + (f"\n  its stderr ends:\n{tail}" if tail else "")
                + f"\n  rebuild it: conformance setup-worker {fw} --dir {Path(python).parent.parent}"
                + (" -r REQUIREMENT..." if fw != "mxnet" else "")
            )
    return "\n".join(problems) or None
