"""The regression gate: a run compared with a committed baseline.

A team that pins framework versions records a baseline of a run
(`conformance baseline`): per cell, the framework version, the outcome, the
variants its cases were found to follow and the worst error; per framework
mode, the default hyperparameters it reported. Before an upgrade merges,
CI runs the same cells with the baseline's seed (so hypothesis draws the
same cases) under the candidate versions and `conformance gate` compares:

- fails on a cell whose outcome got worse (ranks below), a changed set of
  matched variants (the semantics changed), a changed default, and a cell
  that disappeared (a new crash is an outcome that got worse);
- reports, without failing, improvements, new cells and changed numerics
  (the worst error moved by more than a factor of 2 and 1 ulp: a different
  rounding path, still within the tolerance).

The result is a changelog-style list (cell, before, after, why), printed,
written as `gate.json` beside the run's results, and shown in its report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .results import version_label

SCHEMA = 1
GATE = "gate.json"
#: Outcomes by how bad they are; a move to a higher rank fails the gate.
RANK = {"conforms": 0, "known-divergence": 0, "unsupported": 1, "not run": 1, "diverges": 2, "crash": 3}


def _outcome(cell: dict[str, Any]) -> str:
    return "not run" if cell.get("skipped") else cell["outcome"]


def _variants(cell: dict[str, Any]) -> list[str]:
    """The variants the cell's cases were found to follow, besides the canonical
    rule (a case that matches canonical and the declared variant alike tells
    nothing, so `canonical` beside a variant is left out; none: canonical)."""
    return sorted(v for v, n in (cell.get("matched_variants") or {}).items() if n and v != "canonical")


def baseline(summary: dict[str, Any]) -> dict[str, Any]:
    """The baseline record of a summary (see the module docstring)."""
    versions: dict[str, str] = {}
    seeds = set()
    for env in summary.get("environments") or []:
        seeds.add((env.get("run") or {}).get("seed"))
        for fw, info in (env.get("frameworks") or {}).items():
            if isinstance(info, dict) and info.get("versions"):
                versions[fw] = version_label(info["versions"])
    cells = {}
    for c in summary["cells"]:
        worst = c.get("worst_errors") or {}
        cells[c["id"]] = {
            "framework": c["framework"],
            "version": c.get("version") or versions.get(c["framework"]),
            "outcome": _outcome(c),
            "variants": _variants(c),
            "known_issues": sorted(c.get("known_issues") or {}),
            "examples": c.get("examples", 0),
            "worst_ulp": worst.get("max_ulp_error"),
            "worst_margin": worst.get("margin"),
        }
    defaults = {
        f"{d['rule']}/{d['framework']}/{d['mode']}/{d['hyperparameter']}": d.get("framework_default")
        for d in summary.get("defaults") or []
    }
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": sorted(s for s in seeds if s is not None),
        "versions": versions,
        "cells": cells,
        "defaults": defaults,
    }


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def compare(base: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Every difference between a baseline and a run's baseline record, as entries
    {kind, cell, before, after, why, fails}."""
    entries: list[dict[str, Any]] = []

    def add(kind: str, cell: str, before: Any, after: Any, why: str, fails: bool) -> None:
        entries.append({"kind": kind, "cell": cell, "before": before, "after": after, "why": why, "fails": fails})

    for cid, b in sorted(base["cells"].items()):
        r = run["cells"].get(cid)
        if r is None:
            add("disappeared", cid, b["outcome"], None, "the cell is not in the run (renamed mode, dropped option, or not selected)", True)
            continue
        rb, rr = RANK.get(b["outcome"], 9), RANK.get(r["outcome"], 9)
        if rr > rb:
            why = "a new crash" if r["outcome"] == "crash" else f"the outcome got worse ({b['outcome']} -> {r['outcome']})"
            add("worse", cid, b["outcome"], r["outcome"], why, True)
        elif rr < rb:
            add("better", cid, b["outcome"], r["outcome"], f"the outcome improved ({b['outcome']} -> {r['outcome']})", False)
        # (conforms <-> known-divergence changes the matched variants too)
        if b["variants"] != r["variants"] and rr <= rb and "not run" not in (b["outcome"], r["outcome"]):
            add("semantics", cid, ", ".join(b["variants"]) or "canonical", ", ".join(r["variants"]) or "canonical",
                "the variants the cases follow changed (the semantics changed)", True)
        wb, wr = _num(b.get("worst_ulp")), _num(r.get("worst_ulp"))
        if wb is not None and wr is not None and abs(wr - wb) > 1 and (max(wr, wb) > 2 * max(min(wr, wb), 1e-300)):
            add("numerics", cid, f"{wb:.3g} ulp", f"{wr:.3g} ulp", "the worst error moved (a different rounding path, within the tolerance)", False)
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
        "entries": entries,
    }


def changelog(result: dict[str, Any]) -> str:
    """The gate's result as text, failing entries first."""
    lines = []
    for fw, v in result["versions"].items():
        lines.append(f"{fw}: {v['before']} -> {v['after']}")
    if result["seed"]["differ"]:
        lines.append(f"warning: the run's seed {result['seed']['run']} is not the baseline's {result['seed']['baseline']}: "
                     "other cases were drawn, so variant sets may differ by chance (run with --seed)")
    failing = [e for e in result["entries"] if e["fails"]]
    other = [e for e in result["entries"] if not e["fails"]]
    for title, group in (("FAIL", failing), ("note", other)):
        for e in group:
            lines.append(f"{title} {e['kind']:<11} {e['cell']}: {e['before']} -> {e['after']} ({e['why']})")
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
