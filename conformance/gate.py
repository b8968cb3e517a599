"""The regression gate: a run compared with a committed baseline.

A team that pins framework versions records a baseline of a run
(`conformance baseline`): per cell, the framework version, the outcome, the
variants its cases were found to follow and the worst error; per framework
mode, the default hyperparameters it reported. Before an upgrade merges,
CI runs the same cells with the baseline's seed (so hypothesis draws the
same cases) under the candidate versions and `conformance gate` compares:

- fails on a cell whose outcome got worse (ranks below), a changed set of
  matched variants (the semantics changed), a new precision finding
  (`precision-loss`, `nonfinite`, `stalled`: an upgrade that starts losing
  float64 precision), a changed default, and a cell that disappeared (a new
  crash is an outcome that got worse);
- never compares the semantics or precision of a cell that crashed or did
  not run on either side (it produced no values): only its outcome;
- reports a declared known issue that no longer reproduces as "fixed in
  <version>" (the spec's declaration is stale);
- reports, without failing, improvements, new cells and changed numerics
  (the worst error moved by more than a factor of 2 and 1 ulp: a different
  rounding path, still within the tolerance).

A side-by-side run (`conformance run --candidate FRAMEWORK=PYTHON`) holds
both versions: the gate then judges the candidate's cells (`...@candidate`),
against the baseline file or, without one, against the run's own pinned
cells, by the same rules; and fails on a `pinned~candidate` cell whose two
environments computed results that differ beyond the tolerance on identical
cases (noting how many cases were bit-identical).

`frameworks` keeps the gate to some frameworks: a run of one framework
gated against the baseline of all.

The result is a changelog-style list (cell, before, after, why), printed,
written as `gate.json` beside the run's results, and shown in its report.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cells import CANDIDATE, Cell, Cross, Selection
from .jsonnum import from_json
from .outcomes import CONFORMS, CRASH, DIVERGES, KNOWN, NOT_RUN, UNSUPPORTED, severity
from .results import version_labels

SCHEMA = 1
GATE = "gate.json"


def _outcome(cell: dict[str, Any]) -> str:
    return NOT_RUN if cell.get("skipped") else cell["outcome"]


def _variants(cell: dict[str, Any]) -> list[str]:
    """The variants the cell's cases were found to follow, besides the canonical
    rule (a case that matches canonical and the declared variant alike tells
    nothing, so `canonical` beside a variant is left out; none: canonical)."""
    return sorted(v for v, n in (cell.get("matched_variants") or {}).items() if n and v != "canonical")


def baseline(summary: dict[str, Any]) -> dict[str, Any]:
    """The baseline record of a summary (see the module docstring)."""
    envs = summary.get("environments") or []
    versions = version_labels(envs)
    seeds = {(env.get("run") or {}).get("seed") for env in envs}
    draws = {(env.get("run") or {}).get("draw") for env in envs}
    cells = {}
    for c in summary["cells"]:
        worst = c.get("worst_errors") or {}
        cells[c["id"]] = {
            **Cell.from_json(c).to_json(),
            "env": c.get("env") or "",
            "bit_identical": c.get("bit_identical", 0),
            # cases with a verdict (a cross cell's unsupported cases compare nothing)
            "compared": sum(n for o, n in c["counts"].items() if o != UNSUPPORTED) if c.get("counts") else c.get("examples", 0),
            # (a candidate's cell has its own version: "mxnet@candidate"; a pinned~candidate pair has none)
            "version": c.get("version") or versions.get(c["framework"] + (f"@{c['env']}" if c.get("env") else "")),
            "outcome": _outcome(c),
            "variants": _variants(c),
            "known_issues": sorted(c.get("known_issues") or {}),
            "examples": c.get("examples", 0),
            "worst_ulp": worst.get("max_ulp_error"),
            "worst_margin": worst.get("margin"),
            # the precision axis: which findings the cases showed (none: exact)
            "precision": sorted(o for o, n in (c.get("precision_counts") or {}).items() if n and o != "exact"),
            "precision_undeclared": c.get("precision_undeclared", 0),
        }
    defaults = {
        f"{d['rule']}/{d['framework']}/{d['mode']}/{d['hyperparameter']}": d.get("framework_default")
        for d in summary.get("defaults") or []
        if "hyperparameter" in d  # (not an optimizer the framework could not be asked about)
    }
    selections = [(env.get("run") or {}).get("selection") for env in summary.get("environments") or []]
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # what the run chose to run (a baseline cell outside it is not "disappeared")
        "selections": [s for s in selections if isinstance(s, dict)],
        "seed": sorted(s for s in seeds if s is not None),
        # how the cases were drawn from the seed (conformance.strategies.DRAW_SCHEME; absent: not recorded)
        "draw": sorted(d for d in draws if d is not None),
        "versions": versions,
        "cells": cells,
        "defaults": defaults,
    }


def _selected(cell: dict[str, Any], selections: list[dict[str, Any]]) -> bool:
    """Whether some selection of the run keeps this (baseline) cell; a cross
    cell is kept when both of its sides are, or the selection names it (as
    `conformance run` does)."""
    if not selections:
        return True
    c = Cell.from_json(cell)
    plain = replace(c, env="", cross=None if c.crosses("env") else c.cross)  # (environments are not selected)
    for sel in selections:
        selection = Selection(**{k: tuple(v) if v else None for k, v in sel.items() if k in Selection.__dataclass_fields__})
        if selection.keeps(plain) or (plain.is_cross and all(selection.keeps(side) for side in plain.sides())):
            return True
    return False


def _pair_id(cell: dict[str, Any]) -> str:
    """The id of the pinned~candidate cell that compares this pinned cell's two environments."""
    return replace(Cell.from_json(cell), cross=Cross("env", CANDIDATE)).id


def _keep(record: dict[str, Any], frameworks: Any) -> dict[str, Any]:
    """A baseline record with only the cells and defaults of `frameworks`."""
    if not frameworks:
        return record
    fws = set(frameworks)
    return dict(
        record,
        cells={k: c for k, c in record["cells"].items() if c["framework"] in fws},
        defaults={k: v for k, v in record.get("defaults", {}).items() if k.split("/")[1].split("@")[0] in fws},
        versions={k: v for k, v in record.get("versions", {}).items() if k.split("@")[0] in fws},
    )


def side_by_side(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """A side-by-side run's record split into (its pinned cells, its candidate's
    cells under the pinned ids, the pinned~candidate comparisons); None for a
    run without a candidate."""
    cells = {cid: Cell.from_json(c) for cid, c in run["cells"].items()}
    candidate = {cid: c for cid, c in run["cells"].items() if cells[cid].env == CANDIDATE}
    if not candidate:
        return None
    fws = {c["framework"] for c in candidate.values()}
    pinned = {cid: c for cid, c in run["cells"].items() if not cells[cid].env and not cells[cid].crosses("env") and c["framework"] in fws}
    pairs = {cid: c for cid, c in run["cells"].items() if cells[cid].crosses("env")}
    renamed = {replace(cells[cid], env="").id: c for cid, c in candidate.items()}

    def defaults(candidate_side: bool) -> dict[str, Any]:
        out = {}
        for key, value in run.get("defaults", {}).items():
            rule, fw, rest = key.split("/", 2)
            name, _, env = fw.partition("@")
            if name in fws and bool(env) == candidate_side:
                out[f"{rule}/{name}/{rest}"] = value
        return out

    versions = run.get("versions", {})
    base = dict(run, cells=pinned, defaults=defaults(False), versions={fw: versions.get(fw) for fw in fws})
    cand = dict(run, cells=renamed, defaults=defaults(True), versions={fw: versions.get(f"{fw}@candidate") for fw in fws})
    return base, cand, pairs


def compare(base: dict[str, Any] | None, run: dict[str, Any], frameworks: Any = None) -> dict[str, Any]:
    """Every difference between a baseline and a run's baseline record, as entries
    {kind, cell, before, after, why, fails}. For a side-by-side run the
    candidate's cells are judged, against `base` or, when it is None, against
    the run's pinned cells; `frameworks` restricts both to those frameworks."""
    entries: list[dict[str, Any]] = []

    def add(kind: str, cell: str, before: Any, after: Any, why: str, fails: bool) -> None:
        entries.append({"kind": kind, "cell": cell, "before": before, "after": after, "why": why, "fails": fails})

    split = side_by_side(run)
    pairs: dict[str, Any] = {}
    own_pinned = False  # gated against the run's own pinned cells, on identical cases
    if split is not None:
        pinned, run, pairs = split
        if base is None:
            base, own_pinned = pinned, True
        else:  # (the candidate is gated; its frameworks only)
            base = _keep(base, {c["framework"] for c in run["cells"].values()})
    elif base is None:
        raise ValueError("no baseline: pass --baseline FILE, or gate a side-by-side run (conformance run --candidate FRAMEWORK=PYTHON)")
    base, run = _keep(base, frameworks), _keep(run, frameworks)
    pairs = {k: c for k, c in pairs.items() if not frameworks or c["framework"] in set(frameworks)}
    for cid, c in sorted(pairs.items()):
        same = f"{c.get('bit_identical', 0)} of {c.get('compared', 0)} case(s) bit-identical"
        if c["outcome"] in (DIVERGES, CRASH):
            add("changed", cid, "pinned", "candidate",
                f"the candidate computes other values than the pinned version on identical cases, beyond the tolerance ({same})", True)
    side = _side_by_side_counts(pairs) if pairs else None

    # A baseline whose cases were drawn by another scheme (this tool changed how
    # it draws from a seed) holds other cases: which variants they showed and
    # which precision findings, say nothing about a change. Only outcomes and
    # defaults are compared, and the changelog says to re-record the baseline.
    draws_differ = bool(base.get("draw")) and bool(run.get("draw")) and base["draw"] != run["draw"]
    unselected = 0
    for cid, b in sorted(base["cells"].items()):
        r = run["cells"].get(cid)
        if r is None and not _selected(b, run.get("selections") or []):
            unselected += 1  # the run did not choose to run it
            continue
        if r is None:
            add("disappeared", cid, b["outcome"], None, "the cell is not in the run (renamed mode, dropped option, or not selected)", True)
            continue
        # On identical cases, a pinned~candidate pair within the tolerance says
        # that both versions computed the same values: a flipped variant or
        # precision label is then the classification of a case that barely tells
        # the variants apart (float16), not a change, and is noted only.
        pair = pairs.get(_pair_id(b)) if own_pinned else None
        same_values = bool(pair is not None and pair.get("compared") and pair["outcome"] in (CONFORMS, KNOWN))
        _compare_cell(add, cid, b, r, draws_differ, same_values)
    for cid in sorted(set(run["cells"]) - set(base["cells"])):
        add("new", cid, None, run["cells"][cid]["outcome"], "a cell the baseline does not have", False)
    for key, before in sorted(base.get("defaults", {}).items()):
        if key in run.get("defaults", {}) and run["defaults"][key] != before:
            add("default", key, before, run["defaults"][key], "the framework's default changed", True)
    upgrades = {fw: (base["versions"].get(fw), v) for fw, v in run.get("versions", {}).items() if base["versions"].get(fw) != v}
    seeds_differ = bool(base.get("seed")) and bool(run.get("seed")) and base["seed"] != run["seed"]
    return {
        "schema": SCHEMA,
        "passed": not any(e["fails"] for e in entries),
        "versions": {fw: {"before": a, "after": b} for fw, (a, b) in upgrades.items()},
        "seed": {"baseline": base.get("seed"), "run": run.get("seed"), "differ": seeds_differ},
        "draw": {"baseline": base.get("draw"), "run": run.get("draw"), "differ": draws_differ},
        "entries": entries,
        "side_by_side": side,
        "not_selected": unselected,
    }


def _side_by_side_counts(pairs: dict[str, Any]) -> dict[str, int]:
    """How the pinned~candidate cells compared the two versions on identical cases."""
    compared = [c for c in pairs.values() if c.get("compared")]
    return {
        "cells": len(compared),
        "bit_identical": sum(1 for c in compared if c.get("bit_identical", 0) == c["compared"]),
        "within_tolerance": sum(1 for c in compared if c["outcome"] in (CONFORMS, KNOWN) and c.get("bit_identical", 0) != c["compared"]),
        "changed": sum(1 for c in compared if c["outcome"] in (DIVERGES, CRASH)),
        "cases": sum(c["compared"] for c in compared),
        "bit_identical_cases": sum(c.get("bit_identical", 0) for c in compared),
    }


def _compare_cell(add: Any, cid: str, b: dict[str, Any], r: dict[str, Any], draws_differ: bool, same_values: bool) -> None:
    """The entries of one cell present in the baseline (`b`) and the run (`r`):
    outcome, semantics, fixed known issues, precision and numerics."""
    rb, rr = severity(b["outcome"]), severity(r["outcome"])
    if rr > rb:
        why = "a new crash" if r["outcome"] == CRASH else f"the outcome got worse ({b['outcome']} -> {r['outcome']})"
        add("worse", cid, b["outcome"], r["outcome"], why, True)
    elif rr < rb:
        add("better", cid, b["outcome"], r["outcome"], f"the outcome improved ({b['outcome']} -> {r['outcome']})", False)
    # A side that crashed or did not run produced no values: its variants
    # and precision are not compared, only its outcome (above).
    produced = not {b["outcome"], r["outcome"]} & {NOT_RUN, CRASH, UNSUPPORTED} and not draws_differ
    also = "; the two versions computed the same values within the tolerance on identical cases (pinned~candidate), so not failed" if same_values else ""
    # (conforms <-> known-divergence changes the matched variants too)
    if b["variants"] != r["variants"] and rr <= rb and produced:
        add("semantics", cid, ", ".join(b["variants"]) or "canonical", ", ".join(r["variants"]) or "canonical",
            "the variants the cases follow changed (the semantics changed)" + also, not same_values)
    fixed = sorted(set(b.get("known_issues") or ()) - set(r.get("known_issues") or ()))
    if fixed and produced:
        version = r.get("version") or "the run's version"
        for issue in fixed:
            add("fixed", cid, "known issue", "no longer reproduces",
                f"fixed in {version}: the declared known issue no longer reproduces ({issue[:160]}); the spec's declaration is stale", False)
    if "precision" in b and "precision" in r and produced:
        new = sorted(set(r["precision"]) - set(b["precision"]))
        gone = sorted(set(b["precision"]) - set(r["precision"]))
        if new or (r.get("precision_undeclared") and not b.get("precision_undeclared")):
            add("precision", cid, ", ".join(b["precision"]) or "exact", ", ".join(r["precision"]) or "exact",
                "the precision changed: " + (f"new finding(s) {', '.join(new)}" if new else "an undeclared precision finding")
                + " against the exact rule" + also, not same_values)
        elif gone:
            add("precision", cid, ", ".join(b["precision"]), ", ".join(r["precision"]) or "exact",
                f"the precision improved ({', '.join(gone)} no longer found)", False)
    wb, wr = from_json(b.get("worst_ulp")), from_json(r.get("worst_ulp"))
    if Cell.from_json(b).crosses("gradients") or draws_differ:
        wb = None  # the sparse~dense oracle's error is the declared sparse difference, not rounding (other cases: nothing to compare)
    if wb is not None and wr is not None and abs(wr - wb) > 1 and (max(wr, wb) > 2 * max(min(wr, wb), 1e-300)):
        add("numerics", cid, f"{wb:.3g} ulp", f"{wr:.3g} ulp", "the worst error moved (a different rounding path, within the tolerance)", False)


def changelog(result: dict[str, Any]) -> str:
    """The gate's result as text, failing entries first."""
    lines = []
    for fw, v in result["versions"].items():
        lines.append(f"{fw}: {v['before']} -> {v['after']}")
    if result["seed"]["differ"]:
        lines.append(f"warning: the run's seed {result['seed']['run']} is not the baseline's {result['seed']['baseline']}: "
                     "other cases were drawn, so variant sets may differ by chance (run with --seed)")
    draw = result.get("draw") or {}
    if draw.get("differ"):
        lines.append(f"warning: the baseline's cases were drawn by draw scheme {draw['baseline']}, this run's by {draw['run']} "
                     "(this tool changed how it draws cases from a seed): only outcomes and defaults are compared; "
                     "re-record the baseline with `conformance baseline` from a run of the pinned versions")
    side = result.get("side_by_side")
    if side:
        lines.append(
            f"side by side: {side['cells']} cell(s) compared on identical cases: {side['bit_identical']} bit-identical on every case,"
            f" {side['within_tolerance']} within the tolerance, {side['changed']} changed beyond it"
            f" ({side['bit_identical_cases']} of {side['cases']} case(s) bit-identical)"
        )
    failing = [e for e in result["entries"] if e["fails"]]
    # the real changes first: what improved or was fixed, then precision, new cells, numerics
    order = {"better": 0, "fixed": 1, "precision": 2, "new": 3, "numerics": 4}
    other = sorted((e for e in result["entries"] if not e["fails"]), key=lambda e: order.get(e["kind"], 5))
    for title, group in (("FAIL", failing), ("note", other)):
        for e in group:
            lines.append(f"{title} {e['kind']:<11} {e['cell']}: {e['before']} -> {e['after']} ({e['why']})")
    if result.get("not_selected"):
        lines.append(f"({result['not_selected']} baseline cell(s) outside the run's selection left out)")
    lines.append(f"gate: {'passed' if result['passed'] else 'FAILED'} ({len(failing)} failing, {len(other)} noted)")
    return "\n".join(lines)


def read_baseline(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "cells" not in data:
        raise ValueError(f"{path}: not a conformance baseline (schema {SCHEMA}; make one with `conformance baseline`)")
    return data


def write_gate(directory: str | Path, result: dict[str, Any]) -> Path:
    path = Path(directory) / GATE
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return path
