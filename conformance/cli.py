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
from .catalog import Catalog, load_catalog, spec_files
from .registry import FRAMEWORKS, REFERENCE, availability
from .spec import load_spec
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
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("validate", help="validate spec files (the built-in ones and any given)")
    _common(p)
    p.add_argument("paths", nargs="*", metavar="PATH", help="spec files or directories to validate as well")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("replay", help="replay one case file and print its trajectory")
    _common(p)
    p.add_argument("case", metavar="CASE.json")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_replay)
    return parser


# ---------------------------------------------------------------- list


def list_data(catalog: Catalog) -> dict[str, Any]:
    frameworks = {}
    for name in FRAMEWORKS:
        a = availability(name)
        frameworks[name] = {
            "installed": a.installed,
            "version": a.version,
            "adapter": a.adapter,
            "runnable": a.installed and a.adapter,
            "reason": a.reason,
        }
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


def cmd_list(args: argparse.Namespace, catalog: Catalog) -> int:
    data = list_data(catalog)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("Frameworks:")
    for name, f in data["frameworks"].items():
        if f["runnable"]:
            status = f"available ({f['version']})"
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


def replay_data(catalog: Catalog, case) -> dict[str, Any]:
    from .kernel import run_case

    spec = catalog.get(case.rule)
    for name in case.variant:
        spec.variant(name)
    hp = spec.resolve(case.hyperparameters)
    if case.framework != REFERENCE:
        a = availability(case.framework)
        raise SourceError(
            "<replay>",
            (),
            None,
            f"framework {case.framework!r} cannot be replayed by this version: "
            + (a.reason or "its adapter is not wired into replay yet")
            + f"; replay it with \"framework\": \"{REFERENCE}\" for the kernel alone",
        )
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
        "hyperparameters": hp,
        "steps": case.steps,
    }
    out.update(traj.to_json())
    return out


def cmd_replay(args: argparse.Namespace, catalog: Catalog) -> int:
    from .case import Case

    case = Case.load(args.case)
    data = replay_data(catalog, case)
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


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
