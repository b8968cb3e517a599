"""The `conformance` command: list rules and frameworks, validate specs, replay cases.

Every subcommand takes `--specs DIR` (repeatable) to load a user's spec
directory besides the built-in specs. Known problems (a malformed spec or
case, an unknown rule) print one `error:` line naming the file, the key path
and the line, and exit with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .case import Case
from .catalog import Catalog, load_catalog, spec_files
from .cells import Cell, column_order
from .execution import make_host, WorkerHost
from .gate import baseline, changelog, compare, read_baseline, write_gate
from .progress import Counter, Display, FILE as PROGRESS_FILE, watch
from .registry import availability, entry, foreign_module, FRAMEWORKS, package_versions, REFERENCE, worker_package_versions, worker_python
from .replay import case_for, replay_data
from .report import write_report
from .results import clear_run, read_records
from .summary import sparse_semantics, summarize, write_summary
from .quickcheck import check_section
from .session import add_options, broken_workers, discover_pythons, option_argv, Options, parse_frameworks, parse_pythons, remember_seed, Session
from .spec import LAZY
from .specload import load_spec
from .terminal import failing_cells, print_answer, print_cells, print_sparse
from .yamlsource import SourceError

EXIT_USAGE = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--specs",
        action="append",
        default=[],
        metavar="DIR",
        help="also load the spec files (*.yaml) of DIR; repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conformance",
        description="Do the frameworks compute the optimizer update rules they claim?",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="rules, their variants and frameworks, and which frameworks are importable here")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--defaults",
        action="store_true",
        help="ask each available framework for its default hyperparameters (introspected) and show where they differ from the canonical ones",
    )
    p.add_argument(
        "--sparse",
        nargs="?",
        const="",
        metavar="RESULTS_DIR",
        help="the sparse-semantics table (dense / lazy / unsupported per rule and framework mode), as measured by a run:"
        " RESULTS_DIR, or the newest run under reports/; the spec's declarations where nothing was measured",
    )
    p.add_argument("--frameworks", metavar="LIST", help="with --defaults: comma-separated frameworks (default: all available)")
    p.add_argument("--rules", metavar="LIST", help="with --defaults: comma-separated rules (default: all)")
    p.add_argument("--python", action="append", metavar="FRAMEWORK=PYTHON", help="run FRAMEWORK's worker under this interpreter (repeatable)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("validate", help="validate spec files (the built-in ones and any given)")
    _common(p)
    p.add_argument("paths", nargs="*", metavar="PATH", help="spec files or directories to validate as well")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("replay", help="replay one case file (reference or framework) and print the outcome")
    _common(p)
    p.add_argument("case", metavar="CASE.json")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--allow-import", dest="allow_import", action="append", default=None, metavar="PACKAGE",
                   help="a case of a user's target (--specs) runs PACKAGE's code: allow it (repeatable)")
    p.add_argument("--isolation", choices=("worker", "inprocess"), default="worker", help="where the framework runs")
    p.add_argument("--python", action="append", default=None, metavar="FRAMEWORK=PYTHON", help="the framework's worker interpreter")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="run the conformance cells and write results, summary and report")
    _common(p)
    add_options(p.add_argument)
    p.add_argument("--out", metavar="DIR", help="results directory (default: reports/<run-id>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="also list every cell and the long semantics, sparse, defaults and precision tables")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="run N shards in parallel processes and merge them (default: the number of CPUs, at most 4; 1 runs here)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check",
        help="check one optimizer outside the frameworks (a library's or your own) against a rule: a run of that target alone",
    )
    _common(p)
    p.add_argument("target", metavar="FRAMEWORK:PATH", help="e.g. torch:optimi.AdamW or torch:my_team.optim.AdamW (the framework that runs it, and the dotted path of the class or factory)")
    p.add_argument("--rule", required=True, help="the rule it claims to implement, e.g. adamw")
    add_options(p.add_argument)
    p.add_argument("--out", metavar="DIR", help="results directory (default: reports/<run-id>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="also list every cell and the long tables")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="parallel shards, as for run")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "explore",
        help="a run with random seeds (profile dev unless given) that saves every counterexample as a case file for a spec to pin",
    )
    _common(p)
    add_options(p.add_argument)
    p.add_argument("--out", metavar="DIR", help="results directory (default: reports/<run-id>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="parallel shards, as for run")
    p.add_argument("--save-cases", metavar="DIR", default=None,
                   help="where the counterexamples go (default: specs/cases/found/ in a checkout, else DIR/found/ of the run)")
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser("setup-worker", help="create a framework's own worker environment (MXNet: .venv-mxnet with numpy<1.24; any framework at a chosen version with --requirement)")
    p.add_argument("framework", choices=list(FRAMEWORKS))
    p.add_argument("--requirement", "-r", action="append", metavar="REQ",
                   help="pip requirement(s) to install instead of the framework's own (repeatable), e.g. tensorflow-cpu==2.15.1 for a candidate or pinned version")
    p.add_argument("--dir", metavar="DIR", help="where to create it (default: .venv-FRAMEWORK, where runs look for it)")
    p.add_argument("--python", metavar="PYTHON", default=None, help="the interpreter to base it on (default: this one)")
    p.add_argument("--no-deps", action="store_true",
                   help="install the requirements without their own pins (old releases whose wheels pin an ancient numpy or"
                        " graphviz), then numpy as the worker needs it (numpy<1.24 unless a -r names numpy)")
    p.set_defaults(func=cmd_setup_worker, specs=[])

    p = sub.add_parser("merge", help="merge result directories (shards, machines) into one summary and report")
    p.add_argument("dirs", nargs="+", metavar="RESULTS_DIR")
    p.add_argument("-o", "--out", required=True, metavar="DIR")
    p.add_argument("--verbose", action="store_true", help="also list every cell and the long tables")
    p.set_defaults(func=cmd_merge, specs=[])

    p = sub.add_parser("baseline", help="record a run's cells (version, outcome, variants, worst error) and defaults as a baseline")
    p.add_argument("dirs", nargs="+", metavar="RESULTS_DIR")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="e.g. reports/baseline.json")
    p.set_defaults(func=cmd_baseline, specs=[])

    p = sub.add_parser("gate", help="compare a run with a baseline; exit 1 on worse outcomes, changed semantics or defaults, lost cells")
    p.add_argument("dirs", nargs="+", metavar="RESULTS_DIR")
    p.add_argument("--baseline", metavar="FILE", help="a baseline file (default, for a side-by-side run: its pinned cells)")
    p.add_argument("--frameworks", metavar="LIST", help="gate only these frameworks (a run of some against a baseline of all)")
    p.set_defaults(func=cmd_gate, specs=[])

    p = sub.add_parser("report", help="write index.html (and summary.json) for result directories")
    p.add_argument("dirs", nargs="+", metavar="RESULTS_DIR")
    p.add_argument("-o", "--out", metavar="DIR", help="where to write (default: the first directory)")
    p.set_defaults(func=cmd_merge, specs=[])
    return parser


# ---------------------------------------------------------------- list


def list_data(catalog: Catalog) -> dict[str, Any]:

    frameworks = {}
    for name in FRAMEWORKS:
        a = availability(name)
        info = {
            "installed": a.installed,
            "version": a.version,
            "versions": package_versions(name) if a.installed else {},
            "adapter": a.adapter,
            "runnable": a.installed and a.adapter,
            "reason": a.reason,
            "python": None,
        }
        if not a.installed:
            # found as `conformance run` finds it: a worker environment of its own
            python = worker_python(name)
            versions = worker_package_versions(name, python) if python else None
            if versions is not None:
                info.update(runnable=a.adapter, reason=None, python=python, versions=versions)
            elif python:
                info["reason"] = f"its worker environment {python} does not import {FRAMEWORKS[name].module} (rebuild it: conformance setup-worker {name})"
        frameworks[name] = info
    rules = {}
    for spec in catalog:
        rules[spec.rule] = {
            "title": spec.title,
            "file": spec.file,
            "hyperparameters": {k: h.default for k, h in spec.hyperparameters.items()},
            "state": list(spec.state),
            "variants": {name: {"explain": v.explain, "cite": v.cite} for name, v in spec.variants.items()},
            "frameworks": {
                fw: {
                    "modes": [m for (f, m) in spec.modes if f == fw],
                    "expect": {m: list(cfg.expect) for (f, m), cfg in spec.modes.items() if f == fw},
                    "sparse": {m: cfg.sparse.semantics for (f, m), cfg in spec.modes.items() if f == fw},
                }
                for fw in spec.frameworks
            },
        }
    return {"frameworks": frameworks, "rules": rules}


def defaults_data(catalog: Catalog, args: argparse.Namespace) -> dict[str, Any]:
    """Measured defaults of every available framework (rows as in summary.json)."""

    options = Options.from_namespace(args, seed=0)
    options.with_default_frameworks(catalog)
    session = Session(catalog, options)
    rows, unavailable = [], {}
    try:
        for fw in options.selection.frameworks or ():
            info = session.describe(fw)
            if info.get("available"):
                rows.extend(info.get("defaults") or [])
            else:
                unavailable[fw] = info.get("reason")
    finally:
        session.close()
    return {"defaults": rows, "unavailable": unavailable}


def print_defaults(data: dict[str, Any]) -> None:
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for row in data["defaults"]:
        by_rule.setdefault(row["rule"], []).append(row)
    print("Default hyperparameters, as each framework reports them (* differs from canonical, ! the spec's declaration is stale):")
    for rule, rows in by_rule.items():
        print(f"  {rule}")
        for row in rows:
            where = f"{row['framework']}/{row['mode']} {row['optimizer']}"
            if row.get("error"):
                print(f"    {where}: cannot introspect: {row['error']}")
                continue
            mark = "*" if row["differs"] else ("!" if row["stale_declaration"] else " ")
            value = "required" if row["required"] else row["framework_default"]
            extra = f"  (spec declares {row['declared']})" if row["stale_declaration"] else ""
            print(f"   {mark} {row['hyperparameter']:<26} canonical {row['canonical_default']!s:<8} {where} {row['argument']}={value}{extra}")
    for fw, why in data["unavailable"].items():
        print(f"  {fw}: not available: {why}")


def sparse_data(catalog: Catalog, results: str) -> dict[str, Any]:
    """Declared sparse semantics per rule and framework mode, with what a run measured."""

    source = Path(results) if results else _newest_run(Path("reports"))
    measured = {}
    if source is not None and source.exists():
        measured = {(r["rule"], r["framework"], r["mode"]): r for r in sparse_semantics(read_records([source]))}
    rows = []
    for spec in catalog:
        for (fw, mode_name), mode in spec.modes.items():
            m = measured.get((spec.rule, fw, mode_name))
            rows.append({
                "rule": spec.rule,
                "framework": fw,
                "mode": mode_name,
                "optimizer": mode.optimizer,
                "declared": mode.sparse.semantics + (f" (lazy when {mode.sparse.lazy_when})" if mode.sparse.lazy_when else ""),
                "sparse_expect": [v for v in mode.sparse_expect() if v not in mode.expect and v != LAZY.name],
                "cite": mode.sparse.cite,
                "measured": m["measured"] if m else None,
                "cases": m["cases"] if m else {},
                "oracle": m["oracle"] if m else {},
                "reason": (m or {}).get("reason") or (mode.unsupported_reason({}, sparse=True) if mode.sparse.semantics == "unsupported" else None),
            })
    return {"results": str(source) if source is not None and measured else None, "rows": rows}


def _newest_run(root: Path) -> Path | None:
    runs = [p.parent for p in root.glob("*/summary.json")]
    return max(runs, key=lambda p: (p / "summary.json").stat().st_mtime) if runs else None




def cmd_list(args: argparse.Namespace, catalog: Catalog) -> int:
    if args.sparse is not None:
        data = sparse_data(catalog, args.sparse)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print_sparse(data["rows"], data["results"])
        return 0
    if args.defaults:
        data = defaults_data(catalog, args)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print_defaults(data)
        return 0
    data = list_data(catalog)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("Frameworks:")
    for name, f in data["frameworks"].items():
        if f["runnable"]:
            versions = ", ".join(f"{k} {v}" for k, v in f["versions"].items()) or f["version"]
            status = f"available ({versions})" + (f" in its worker environment {f['python']}" if f.get("python") else "")
        else:
            status = f"not available: {f['reason']}" + (f" [installed {f['version']}]" if f["version"] else "")
        print(f"  {name:<11} {status}")
    print()
    print("Rules:")
    for rule, r in data["rules"].items():
        print(f"  {rule:<9} {r['title']}")
        print(f"    variants:   {', '.join(r['variants'])}")
        for fw, info in r["frameworks"].items():
            modes = []
            for m in info["modes"]:
                expect = info["expect"][m]
                modes.append(m + (f" -> {'+'.join(expect)}" if expect else ""))
            print(f"    {fw + ':':<11} {', '.join(modes)}")
    return 0


# ---------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace, catalog: Catalog) -> int:
    count = len(catalog.specs)
    for path in map(Path, args.paths):
        files = spec_files(path) if path.is_dir() else [path]
        for file in files:
            load_spec(file)
            count += 1
    print(f"ok: {count} spec file(s) valid")
    return 0


# ---------------------------------------------------------------- replay


def cmd_replay(args: argparse.Namespace, catalog: Catalog) -> int:

    case = Case.load(args.case)
    data = replay_data(catalog, case, args.isolation, discover_pythons(parse_pythons(args.python)), frozenset(args.allow_import or ()))
    if case.framework != REFERENCE:
        if args.json:
            print(json.dumps(data))
        else:
            print(f"{data['rule']} on {data['framework']}/{data['mode']}/{data['device']}/{data['dtype']}, {data['steps']} step(s): {data['outcome']}")
            print(data["reason"])
            if data.get("detail"):
                print(data["detail"])
        return 1 if data["failing"] else 0
    if args.json:
        print(json.dumps(data))
        return 0
    import numpy as np

    variant = "+".join(data["variant"]) or "canonical"
    print(f"{data['rule']} ({variant}) on {data['framework']}, {data['dtype']} inputs, {data['steps']} step(s)")
    print("hyperparameters: " + ", ".join(f"{k}={v!r}" for k, v in data["hyperparameters"].items()))
    with np.printoptions(precision=17, suppress=False):
        for i, p in enumerate(data["trajectory"], start=1):
            print(f"step {i}: p = {np.array2string(np.asarray(p), separator=', ')}")
    return 0


# ---------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace, catalog: Catalog) -> int:
    import time

    options = Options.from_namespace(args)
    options.with_default_frameworks(catalog)
    if options.shard is None:  # (the shards of a --jobs run were checked by their parent)
        broken = broken_workers(options)
        if broken:
            print(broken, file=sys.stderr)
            return EXIT_USAGE
    if options.shard is None or args.jobs != 1:  # (not a --jobs run's shard: its parent recorded it)
        remember_seed(options.seed)
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{options.seed:08x}"[-9:]
    out = Path(args.out) if args.out else Path("reports") / run_id
    clear_run(out)  # a run into an earlier run's directory reports itself only
    session = Session(catalog, options, out)
    cells = session.cells()
    if not cells and options.shard is None:
        raise ValueError("the selection matches no cell (see `conformance list`)")
    if not cells:
        print(f"conformance run: shard {options.shard[0]}/{options.shard[1]} has no cell of this selection")
        session.close()
        return 0
    jobs = args.jobs if args.jobs is not None else min(os.cpu_count() or 1, 4)
    if jobs > 1 and options.shard is None and len(cells) > 1:
        session.close()
        return _run_jobs(args, options, out, run_id, min(jobs, len(cells)), len(cells))

    frameworks = sorted({c.framework for c in cells}, key=lambda f: column_order(f, catalog.targets()))
    env = session.write_environment(frameworks)
    print(f"conformance run {run_id}: {len(cells)} cell(s), profile {options.profile.name}, seed {options.seed}, results in {out}")
    for fw, info in env["frameworks"].items():
        if info.get("available"):
            devices = ", ".join(f"{d}" + ("" if v.get("available") else " (absent)") for d, v in info.get("devices", {}).items())
            print(f"  {fw}: {json.dumps(info.get('versions'))} via {info.get('isolation')} {info.get('python')}; devices: {devices}")
        else:
            print(f"  {fw}: not available: {info.get('reason')}")
    display = Display(len(cells), enabled=not args.no_progress)
    counter = Counter(len(cells), path=out / PROGRESS_FILE if options.shard is not None else None, on_change=display.show)
    session.on_record = counter.case
    failed = []
    t0 = time.perf_counter()
    try:
        for cell in cells:
            counter.start(cell.id)
            result = session.run_cell(cell)
            counter.done(cell.id, result.failed)
            if result.failed:
                failed.append(result)
    finally:
        display.close()
        session.close()
    summary = write_summary(out)
    # (a shard of a `--jobs` run leaves the report to the merge)
    replays = {}
    for r in failed:
        if r.minimal is not None and r.minimal.case is not None:
            case_file = out / f"minimal-{_safe(r.cell.id)}.json"
            minimal = r.minimal.case
            case_file.write_text(case_for(r.cell, minimal).to_json(indent=1), encoding="utf-8")  # (a cross cell replays as itself)
            replays[r.cell.id] = _replay_command(r.cell, case_file, options)
    if options.shard is not None and args.jobs == 1:  # a shard of a `--jobs` run leaves the report to the merge
        print_cells(summary)
        print(f"summary: {out / 'summary.json'} (the report is written by the merge)")
        return 1 if failing_cells(summary, options.fail_on) else 0
    report = write_report(out, summary, catalog)
    print_answer(summary, report=report, replays=replays, fail_on=options.fail_on, wall=time.perf_counter() - t0, verbose=getattr(args, "verbose", False))
    print(f"summary: {out / 'summary.json'}")
    return 1 if failing_cells(summary, options.fail_on) else 0


def _replay_command(cell: Any, case_file: Path, options: Any) -> str:
    """How to replay a failing cell's minimal case (a candidate's side under its interpreter)."""
    if not cell.env and not cell.crosses("env"):
        return f"conformance replay {case_file} --json"
    candidate = options.candidates.get(cell.framework)
    return (f"conformance replay {case_file} --json --python {cell.framework}={candidate}"
            + (" (and without --python for the pinned side)" if cell.crosses("env") else ""))


def cmd_check(args: argparse.Namespace, catalog: Catalog) -> int:
    """A run of one target: the spec section is written from the rule's
    built-in section for that framework (`check_section`) into the results
    directory, where it can be copied into a spec directory and refined."""
    import time

    import yaml

    framework, sep, path = args.target.partition(":")
    if not sep or framework not in FRAMEWORKS or not path:
        raise ValueError(f"check takes FRAMEWORK:PATH with FRAMEWORK one of {', '.join(FRAMEWORKS)}; got {args.target!r}")
    module = foreign_module(framework, path)
    if module is None:
        raise ValueError(f"{path} is {framework}'s own optimizer: `conformance run --rules {args.rule} --frameworks {framework}` checks it")
    catalog.get(args.rule)
    host = make_host(framework, args.isolation or "worker", discover_pythons(parse_pythons(args.python)).get(framework))
    try:
        # naming the target on this command line is leave to import its module
        answer = host.defaults({"optimizer": path, "mode": "default", "import": module})
    finally:
        host.close()
    if answer.status != "ok":
        raise ValueError(f"cannot inspect {path} on {framework}: {answer.reason}")
    section = check_section(catalog, args.rule, framework, path, answer.result)
    out = Path(args.out) if args.out else Path("reports") / ("check-" + time.strftime("%Y%m%d-%H%M%S"))
    specs = out / "check-spec"
    specs.mkdir(parents=True, exist_ok=True)
    file = specs / f"{args.rule}-{path.replace('.', '_')}.yaml"
    file.write_text(f"# written by `conformance check {args.target} --rule {args.rule}`; copy it into your spec directory to refine it\n"
                    + yaml.safe_dump({"extends": args.rule, "frameworks": {path: section}}, sort_keys=False), encoding="utf-8")
    print(f"check: {path} on {framework} against {args.rule}; its spec section: {file}")
    args.specs = list(args.specs) + [str(specs)]
    args.rules, args.frameworks, args.out = args.rule, path, str(out)
    args.allow_import = list(args.allow_import or []) + [module]
    return cmd_run(args, load_catalog(args.specs))


def cmd_explore(args: argparse.Namespace, catalog: Catalog) -> int:
    """`run` for finding what the derandomized ci profile does not: a random
    seed per run (printed), more cases per cell (profile dev), and each failing
    cell's shrunk minimal case saved as a case file that a spec pins in its
    `cases:` list, after which every run replays it."""
    import shutil
    import time

    if args.conformance_profile is None:
        args.conformance_profile = "dev"
    save = args.save_cases
    if args.out is None:
        args.out = str(Path("reports") / ("explore-" + time.strftime("%Y%m%d-%H%M%S")))
    code = cmd_run(args, catalog)
    found = sorted(Path(args.out).glob("minimal-*.json")) + sorted(Path(args.out).glob("shard-*/minimal-*.json"))
    if not found:
        print("explore: no counterexample found")
        return code
    target = Path(save) if save else (Path("specs/cases/found") if Path("specs/cases").is_dir() else Path(args.out) / "found")
    target.mkdir(parents=True, exist_ok=True)
    seed = json.loads(next(Path(args.out).glob("**/environment-*.json")).read_text(encoding="utf-8"))["run"]["seed"]
    print(f"explore: {len(found)} counterexample(s), seed {seed}; saved as case files to pin (add each to its spec's `cases:`):")
    for f in found:
        data = json.loads(f.read_text(encoding="utf-8"))
        name = f"{f.stem.removeprefix('minimal-')}-seed{seed}.json"
        shutil.copyfile(f, target / name)
        print(f"  {target / name}   (specs/{data.get('rule')}.yaml: cases: [..., {Path('cases', *target.parts[-1:], name) if target.parts[-2:-1] == ('cases',) else target / name}])")
    return code


def cmd_setup_worker(args: argparse.Namespace, catalog: Catalog) -> int:
    """Create (or reuse) a virtual environment with the framework's worker
    requirements, and numpy, which every worker needs; then start a real
    worker in it to check that the environment works."""
    import subprocess

    e = entry(args.framework)
    requirements = list(args.requirement or e.worker_requirements)
    if not requirements:
        raise ValueError(f"{e.title} has no worker environment of its own; name what to install with --requirement, e.g. {e.module}==VERSION")
    if args.requirement and not args.dir:
        raise ValueError("--requirement builds a version of its own: name its directory with --dir")
    names_numpy = any(r.split("=")[0].split("<")[0].split(">")[0].strip().lower() == "numpy" for r in requirements)
    # the worker protocol and every adapter need numpy: a framework's own pins may not bring it
    extra = [] if names_numpy else ["numpy<1.24" if args.no_deps else "numpy"]
    target = Path(args.dir or f".venv-{e.name}")
    python = target / "bin" / "python"
    probe = [str(python), "-c", f"import {e.module}, numpy; print({e.module}.__version__, numpy.__version__)"]
    wanted = target / "conformance-requirements.txt"  # what it was built with: rebuilt when that changes
    built_with = requirements + extra + (["--no-deps"] if args.no_deps else [])
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0 and (
        not wanted.is_file() or wanted.read_text(encoding="utf-8").split() in (built_with, requirements)
    ):
        print(f"{e.title} worker environment already set up: {python}")
        return 0
    base = args.python or sys.executable
    print(f"creating {target} from {base} and installing {' '.join(requirements + extra)}{' without their pins' if args.no_deps else ''}")
    subprocess.run([base, "-m", "venv", "--clear", str(target)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    if args.no_deps:
        subprocess.run([*pip, "--no-deps", *requirements], check=True)
        subprocess.run([*pip, *(extra or [r for r in requirements if r.lower().startswith("numpy")])], check=True)
    else:
        subprocess.run([*pip, *requirements, *extra], check=True)
    wanted.write_text("\n".join(built_with) + "\n", encoding="utf-8")
    done = subprocess.run(probe, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        raise RuntimeError(f"{e.module} does not import in {target} after installing it"
                           + ("" if args.no_deps else "; an old release whose wheel pins old dependencies may need --no-deps"))
    host = WorkerHost(e.name, python=str(python))
    try:
        answer = host.describe()
    finally:
        host.close()
    if answer.status != "ok":
        print((answer.detail or "")[-2000:], file=sys.stderr)
        raise RuntimeError(f"a {e.name} worker does not start in {target}: {answer.reason}")
    versions = ", ".join(f"{k} {v}" for k, v in (answer.result.get("versions") or {}).items() if v)
    print(f"{e.title} ready: {python} ({versions}; a worker started and answered); found by `conformance run` from this"
          f" directory, or pass --python {e.name}={python}")
    return 0


def _run_jobs(args: argparse.Namespace, options: Any, out: Path, run_id: str, jobs: int, n_cells: int) -> int:
    """`conformance run` split into `jobs` shards run by child processes
    (each with its own framework workers), then merged into `out`."""
    import subprocess
    import time

    # the children get the same options from the options table (never argv filtered by hand)
    child_args = option_argv(args, leave=("--seed", "--shard")) + [f"--specs={d}" for d in args.specs]
    out.mkdir(parents=True, exist_ok=True)
    print(f"conformance run {run_id}: {n_cells} cell(s) in {jobs} parallel shards, profile {options.profile.name}, seed {options.seed}, results in {out}")
    t0 = time.perf_counter()
    procs = []
    for k in range(1, jobs + 1):
        shard_dir = out / f"shard-{k}-of-{jobs}"
        cmd = [sys.executable, "-m", "conformance", "run", *child_args, "--seed", str(options.seed), "--shard", f"{k}/{jobs}", "--out", str(shard_dir), "--no-progress", "--jobs", "1"]
        log = open(out / f"shard-{k}-of-{jobs}.log", "w", encoding="utf-8")
        procs.append((k, shard_dir, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    display = Display(n_cells, enabled=not args.no_progress)
    try:
        watch([d for _, d, _, _ in procs], lambda: any(p.poll() is None for *_, p in procs), display)
    finally:
        display.close()
    codes = {}
    for k, shard_dir, log, proc in procs:
        codes[k] = proc.wait()
        log.close()
        if codes[k] not in (0, 1):
            print(f"  shard {k}/{jobs}: exit {codes[k]} after {time.perf_counter() - t0:.0f} s (log: {out / f'shard-{k}-of-{jobs}.log'})")
    summary = write_summary(out)  # reads the shard-*/ directories
    report = write_report(out, summary, load_catalog(args.specs))
    by_env = {c["id"]: c for c in summary["cells"]}
    replays = {}
    for _, shard_dir, _, _ in procs:
        for cid, c in by_env.items():
            case_file = shard_dir / f"minimal-{_safe(cid)}.json"
            if case_file.exists():
                replays[cid] = _replay_command(Cell.from_json(c), case_file, options)
    print_answer(summary, report=report, replays=replays, fail_on=options.fail_on, wall=time.perf_counter() - t0, verbose=getattr(args, "verbose", False))
    print(f"summary: {out / 'summary.json'}; shard logs: {out}/shard-*-of-{jobs}.log")
    broken = [k for k, c in codes.items() if c not in (0, 1)]
    if broken:
        print(f"error: shard(s) {', '.join(map(str, broken))} ended abnormally; see their logs", file=sys.stderr)
        return 2
    return 1 if failing_cells(summary, options.fail_on) else 0


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)




def cmd_baseline(args: argparse.Namespace, catalog: Catalog) -> int:

    data = baseline(summarize(args.dirs))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    outcomes: dict[str, int] = {}
    for c in data["cells"].values():
        outcomes[c["outcome"]] = outcomes.get(c["outcome"], 0) + 1
    print(f"baseline {args.out}: {len(data['cells'])} cells ({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))}),"
          f" {len(data['defaults'])} defaults; versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}; seed {data['seed']}")
    return 0


def cmd_gate(args: argparse.Namespace, catalog: Catalog) -> int:

    summary = summarize(args.dirs)
    frameworks = parse_frameworks(args.frameworks)
    result = compare(read_baseline(args.baseline) if args.baseline else None, baseline(summary), frameworks)
    print(changelog(result))
    out = Path(args.dirs[0])
    write_gate(out, result)
    summary["gate"] = result
    report = write_report(out, summary, catalog)
    print(f"gate: {out / 'gate.json'}; report: {report}")
    return 0 if result["passed"] else 1


def cmd_merge(args: argparse.Namespace, catalog: Catalog) -> int:

    out = Path(args.out or args.dirs[0])
    for d in args.dirs:
        if not Path(d).is_dir():
            raise ValueError(f"{d}: not a results directory")
    summary = write_summary(out, args.dirs)
    report = write_report(out, summary, catalog)
    print_answer(summary, report=report, verbose=getattr(args, "verbose", False))
    print(f"summary: {out / 'summary.json'}")
    return 1 if summary["failed"] else 0


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.specs)
        return args.func(args, catalog)
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SourceError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
    except (KeyError, TypeError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
