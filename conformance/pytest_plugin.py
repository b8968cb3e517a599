"""The pytest plugin (entry point `pytest11`): conformance cells as pytest items.

Spec files are collected as test files: `pytest specs/` (or `pytest --pyargs
conformance.specs` against an installed package) yields one item per cell,
with stable ids such as `specs/adam.yaml::adam[torch-foreach-cpu-float32]`.
Only YAML files in a spec directory are collected: the built-in one, and any
named with `--specs DIR`. Options select cells like `conformance run` does
(the same option table, `conformance.session.OPTIONS`). The run header
prints framework versions, devices, seed and profile; a failing item prints
the case's outcome, errors, first divergent step and the replay command.
pytest fails on `diverges`, `crash` and undeclared precision findings, and
on any outcome class named with `--fail-on`; a cell that cannot run (device
or framework absent) is a skip with the reason.

With pytest-xdist, the controller draws the seed and hands it to the
workers, and every worker writes its own results file into
`--conformance-out DIR`; the controller writes the summary and report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .catalog import builtin_spec_dir, load_catalog
from .cells import Cell, family
from .registry import availability
from .replay import case_for
from .report import write_report
from .summary import write_summary
from .session import Options, Session, add_options, remember_seed
from .strategies import settle_local_constants
from .terminal import cell_link

_KEY = pytest.StashKey["_State"]() if hasattr(pytest, "StashKey") else None


class _State:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.spec_dirs = [builtin_spec_dir().resolve()] + [Path(d).resolve() for d in config.getoption("conformance_specs") or ()]
        self._catalog = None
        self._session: Session | None = None
        worker = getattr(config, "workerinput", None)
        seed = worker.get("conformance_seed") if worker else None
        self.options = Options.from_namespace(config.option, seed=seed)
        if not worker:  # the controller (or a run without xdist) records the seed for --conformance-seed last
            remember_seed(self.options.seed)
        self.out = config.getoption("conformance_out")
        self.worker_id = worker.get("workerid", "main") if worker else "main"

    @property
    def catalog(self):
        if self._catalog is None:
            self._catalog = load_catalog([d for d in self.spec_dirs[1:]])
            try:
                self.options.with_default_frameworks(self._catalog)
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._catalog

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = Session(self.catalog, self.options, self.out, writer_name=self.worker_id)
            if self.options.isolation == "inprocess":
                # adapters load in this process: all of them before any cell draws a case
                settle_local_constants(tuple(fw for fw in self.options.selection.frameworks or () if availability(fw).reason is None))
        return self._session


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "optimizer conformance cells (collected from spec files)")
    add_options(group.addoption, pytest=True)
    group.addoption("--specs", dest="conformance_specs", action="append", default=None, metavar="DIR", help="also collect the spec files of DIR")
    group.addoption("--conformance-out", dest="conformance_out", default=None, metavar="DIR", help="write results*.jsonl, summary.json and index.html into DIR")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_KEY] = _State(config)
    config.addinivalue_line("markers", "conformance: an optimizer conformance cell")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # pytest-xdist: one seed for all workers, families kept together
    node.workerinput["conformance_seed"] = node.config.stash[_KEY].options.seed


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's default `--dist load`, but a family's cells (cells.family)
    go to one worker as one unit, as a `conformance run --jobs` shard keeps
    them, so that they share their framework runs and references; every other
    test is a unit of its own. (xdist's `loadgroup` marks cannot do this under
    pytest 9, whose node ids they no longer rewrite.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling  # (only pytest-xdist calls this hook)

    families = {cell.id: "-".join(family(cell)) for cell in config.stash[_KEY].session.cells()}

    class FamilyScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return families.get(nodeid.rsplit("::", 1)[-1], nodeid)

    return FamilyScheduling(config, log)


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash[_KEY]
    o = state.options
    lines = [
        f"conformance: profile {o.profile.name} ({o.examples or o.profile.max_examples} examples/cell, "
        f"<= {o.profile.max_steps} steps, <= {o.profile.max_size} elements), seed {o.seed}"
        + (" (derandomized: the profile's fixed seed, no example database)" if o.profile.derandomized and o.seed == o.profile.seed else "")
        + (f", fail on {','.join(sorted(o.fail_on))}" if o.fail_on else "")
        + (f", shard {o.shard[0]}/{o.shard[1]}" if o.shard else "")
        + f", adapters in {o.isolation} processes"
    ]
    state.catalog  # (loading it settles the selected frameworks and targets)
    frameworks = o.selection.frameworks or ()
    for fw in frameworks:
        info = state.session.describe(fw)
        if info.get("available"):
            devices = ", ".join(d + ("" if v.get("available") else " (absent)") for d, v in info.get("devices", {}).items())
            lines.append(f"conformance: {fw} {info.get('versions')}; devices: {devices}")
        else:
            lines.append(f"conformance: {fw} not available: {info.get('reason')}")
    return lines


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    state = parent.config.stash[_KEY]
    if file_path.resolve().parent not in state.spec_dirs:
        return None
    return SpecFile.from_parent(parent, path=file_path)


class SpecFile(pytest.File):
    def collect(self):
        state = self.config.stash[_KEY]
        rule = self.path.stem
        try:
            spec = state.catalog.get(rule)
        except KeyError:
            return
        if Path(spec.file).resolve() != self.path.resolve():
            return
        # Frameworks default to those whose adapter exists here, as `conformance run` does.
        cells = [c for c in state.session.cells() if c.rule == rule]
        for cell in cells:
            yield CellItem.from_parent(self, name=cell.id, cell=cell)


class CellItem(pytest.Item):
    def __init__(self, *, cell: Cell, **kwargs: Any):
        super().__init__(**kwargs)
        self.cell = cell
        self.add_marker("conformance")
        self.result = None

    def runtest(self) -> None:
        state = self.config.stash[_KEY]
        self.result = result = state.session.run_cell(self.cell)
        if result.skipped:
            pytest.skip(result.skipped)
        if result.failed:
            raise CellFailed(result, Path(state.out) / "index.html" if state.out else None)

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, CellFailed):
            return excinfo.value.describe()
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.cell.id


class CellFailed(Exception):
    def __init__(self, result: Any, report: Path | None = None):
        super().__init__(result.outcome)
        self.result = result
        self.report = report  # where the session's report will be, if it writes one

    def describe(self) -> str:
        r = self.result
        lines = [f"{r.cell.id}: {r.outcome}" + (f", precision {r.precision}" if r.precision else "")]
        if r.error:
            lines.append(r.error)
        m = r.minimal
        if m is not None:
            lines.append(m.reason)
            p = m.precision
            if p is not None and p.finding:
                lines.append(
                    f"precision: {p.outcome}{'' if p.declared else ' (UNDECLARED)'} at step {p.first_step}, slot {p.slot},"
                    f" element {list(p.element or ())}: got {p.observed_value!r}, the exact rule {p.exact_value!r}"
                    + (f" within {p.bound_value!r}" if p.bound_value is not None else "")
                    + (f"; max rel error {p.max_rel_error:.3g}, {p.max_ulp_error:.3g} ulp" if p.max_rel_error else "")
                )
                if p.cause:
                    lines.append(f"cause: {p.cause}")
            if m.verdict is not None:
                e = m.verdict.against_expected
                lines.append(
                    f"first divergent step {e.first_divergent_step}, slot {e.slot}, element {list(e.element or ())};"
                    f" max abs error {e.max_abs_error:.3g}, rel {e.max_rel_error:.3g}, {e.max_ulp_error:.3g} ulp"
                )
            if m.detail:
                lines.append(m.detail[-2000:])
            if m.case is not None:
                lines.append("minimal case:")
                lines.append(case_for(r.cell, m.case).to_json())  # (a cross cell's replays as the cross cell)
                lines.append("replay: save the case above as case.json and run `conformance replay case.json --json`")
        if self.report is not None:
            lines.append(f"report: {cell_link(self.report, r.cell.id)} (written when the session ends)")
        return "\n".join(lines)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_KEY, None)
    if state is None:
        return
    if state._session is not None:
        if state.out and state._session.writer is not None:
            state._session.write_environment(sorted({c.framework for c in state._session.cells()}))
        state._session.close()
    if state.out and getattr(session.config, "workerinput", None) is None:
        summary = write_summary(state.out)
        write_report(state.out, summary, state.catalog)
