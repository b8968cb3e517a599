"""The summary of a run: one entry per cell, and the tables that answer it.

`summarize` reads a run's results and environments (`conformance.results`;
several directories merge shards) into summary.json: per cell the outcome
counts of both axes, worst errors, matched variants and the cases to show;
per rule and framework mode the semantics, precision and sparse tables; and
`answer`, the rule x framework matrix the terminal and the report open on.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from .cells import Cell
from .jsonnum import size_of
from .outcomes import CONFORMS, CRASH, EXACT, FAILING, FINDINGS, KNOWN, OUTCOMES, PRECISION_OUTCOMES, UNSUPPORTED
from .registry import FRAMEWORKS
from .results import SUMMARY, read_environments, read_versioned_records, version_labels

SCHEMA = 1


def summarize(directories: Iterable[str | Path]) -> dict[str, Any]:
    """One entry per cell: outcome counts, worst errors, matched variants, minimal case."""
    directories = list(directories)
    records = read_versioned_records(directories)
    envs = read_environments(directories)
    env_labels = _env_labels(envs)
    cells: dict[str, dict[str, Any]] = {}
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        cid = r["cell"]
        if cid not in cells:
            cells[cid] = _new_cell(cid, r, env_labels)
        _add_record(cells[cid], counts[cid], r)
    for cid, c in cells.items():
        seen = [o for o in PRECISION_OUTCOMES if c["precision_counts"].get(o)]
        c["precision"] = seen[0] if seen else None
        c["counts"] = dict(counts[cid])
        present = [o for o in OUTCOMES if counts[cid].get(o)]
        c["outcome"] = present[0] if present else UNSUPPORTED
        if c["worst"] is not None:
            w = c["worst"]["against_expected"]
            c["worst_errors"] = {k: w.get(k) for k in ("max_abs_error", "max_rel_error", "max_ulp_error", "margin")}
    ordered = sorted(cells.values(), key=lambda c: c["id"])
    by_env = _by_environment(records)
    return {
        "schema": SCHEMA,
        "sources": [str(d) for d in directories],
        "environments": envs,
        "versions": _versions(envs),
        "totals": dict(Counter(c["outcome"] for c in ordered)),
        "precision_totals": dict(Counter(c["precision"] for c in ordered if c["precision"])),
        "failed": sorted(c["id"] for c in ordered if cell_fails(c)),
        "cells": ordered,
        "semantics": _semantics(by_env),
        "precision": precision_table(ordered),
        "sparse": sparse_semantics(by_env),
        "defaults": _defaults(envs),
    }


def _new_cell(cid: str, r: dict[str, Any], env_labels: dict[tuple[str, str], str]) -> dict[str, Any]:
    """A cell's summary entry before its first record is added."""
    cell = Cell.from_json(r)
    return {
        "id": cid,
        **cell.to_json(),
        "gradients": cell.gradients,
        "env": cell.env,  # side by side: "" (pinned) or "candidate"; `cross` for the two compared
        "cross": cell.cross.to_json() if cell.cross is not None else None,
        "version": r.get("version"),
        # labelled with the versions of each environment
        "env_label": cell.label("env") if cell.crosses("env") else env_labels.get((cell.framework, cell.env)),
        "bit_identical": 0,
        "outcome": None,
        "counts": {},
        "matched_variants": {},
        "fingerprints": {},
        "known_issues": {},
        "stale": 0,
        "examples": 0,
        "seconds": 0.0,
        "unsupported_reasons": {},
        "crash_reasons": {},
        "worst": None,
        # the precision axis: worst outcome, counts, causes, size
        "precision": None,
        "precision_counts": {},
        "precision_causes": {},
        "precision_undeclared": 0,
        "precision_worst": None,
        # elements the precision axis could not judge, and why (never silent)
        "precision_unjudged": {},
        "showcase": None,
        "minimal": None,
        "skipped": None,
    }


def _add_record(c: dict[str, Any], counts: Counter, r: dict[str, Any]) -> None:
    """One record into its cell's entry (a skipped cell's status, a minimal case, or a counted case)."""
    if "cell_status" in r:
        c["skipped"] = r["reason"]
        return
    c["seconds"] += r.get("seconds", 0.0)
    if r.get("phase") == "minimal":
        c["minimal"] = r
        return
    if r.get("phase") == "shrink":
        return
    outcome = r["outcome"]
    counts[outcome] += 1
    c["examples"] += 1
    if outcome == UNSUPPORTED:
        _bump(c["unsupported_reasons"], r.get("reason", ""))
    if outcome == CRASH:
        _bump(c["crash_reasons"], r.get("reason", ""))
    if r.get("matched_variant"):
        _bump(c["matched_variants"], r["matched_variant"])
    for f in r.get("fingerprint") or []:
        _bump(c["fingerprints"], f)
    if r.get("known_issue"):
        _bump(c["known_issues"], r["known_issue"])
    if r.get("stale"):
        c["stale"] += 1
    if r.get("bit_identical"):
        c["bit_identical"] += 1
    _precision_of(c, r)
    if "case" in r and outcome == KNOWN and r.get("matched_variant") and _shows_better(r, c["showcase"]):
        c["showcase"] = r  # a case that shows the declared variant (see ResultWriter.write)
    if "case" in r and r.get("against_expected"):
        margin = size_of(r["against_expected"].get("margin"))
        if c["worst"] is None or margin > size_of(c["worst"]["against_expected"].get("margin")):
            c["worst"] = r


def _versions(envs: list[dict[str, Any]]) -> dict[str, Any]:
    versions = {}
    for env in envs:
        for fw, info in (env.get("frameworks") or {}).items():
            versions[fw] = info.get("versions") if isinstance(info, dict) else info
    return versions


def _defaults(envs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each framework's measured defaults, once per (rule, framework, mode, hyperparameter, argument)."""
    defaults: dict[tuple, dict[str, Any]] = {}
    for env in envs:
        for fw, info in (env.get("frameworks") or {}).items():
            for row in (info.get("defaults") or []) if isinstance(info, dict) else []:
                # (a candidate environment's are its own: "tensorflow@candidate")
                defaults[(row.get("rule"), fw, row.get("mode"), row.get("hyperparameter"), row.get("argument"))] = dict(row, framework=fw)
    return [defaults[k] for k in sorted(defaults, key=lambda k: tuple(str(x) for x in k))]


def _precision_of(c: dict[str, Any], r: dict[str, Any]) -> None:
    """Adds one record's precision verdict to its cell's summary."""
    p = r.get("precision")
    if not p:
        return
    _bump(c["precision_counts"], p["outcome"])
    if p.get("out_of_range"):
        key = "the exact rule leaves the dtype's range"
        c["precision_unjudged"][key] = c["precision_unjudged"].get(key, 0) + p["out_of_range"]
    for why, n in (p.get("unjudged") or {}).items():
        c["precision_unjudged"][why] = c["precision_unjudged"].get(why, 0) + n
    if p["outcome"] in FINDINGS:
        if p.get("declared", True):
            _bump(c["precision_causes"], f"{p['outcome']}: {p.get('cause') or 'no cause named'}")
        else:
            c["precision_undeclared"] += 1
            _bump(c["precision_causes"], f"UNDECLARED {p['outcome']}: {p.get('cause') or 'no declared precision explains it'}")
    if p["outcome"] == "precision-loss":
        w = c["precision_worst"]
        if w is None or size_of(p.get("max_rel_error")) > size_of(w.get("max_rel_error")):
            c["precision_worst"] = {k: p.get(k) for k in ("max_abs_error", "max_rel_error", "max_ulp_error", "margin")}


def cell_fails(c: dict[str, Any], fail_on: Iterable[str] = ()) -> bool:
    """A summary cell fails: `diverges`, `crash`, an undeclared precision
    finding, or an outcome of either axis named in `fail_on` (`--fail-on`)."""
    fail_on = set(fail_on)
    if c.get("skipped"):
        return False
    if c["outcome"] in FAILING or c["outcome"] in fail_on or c.get("precision_undeclared"):
        return True
    return any(n and o in fail_on for o, n in (c.get("precision_counts") or {}).items())


def precision_table(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule x framework/mode/dtype (over devices and gradient kinds): what
    the precision axis found, how often, its size and its causes."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for c in cells:
        if not c.get("precision_counts") or _crossed(c, ("env",)):
            continue
        fw = f"{c['framework']}@{c['env']}" if c.get("env") else c["framework"]
        key = (c["rule"], fw, c["mode"], c["dtype"])
        row = rows.setdefault(key, {"rule": key[0], "framework": key[1], "mode": key[2], "dtype": key[3],
                                    "counts": {}, "causes": {}, "undeclared": 0, "max_rel_error": None, "max_ulp_error": None})
        for o, n in c["precision_counts"].items():
            row["counts"][o] = row["counts"].get(o, 0) + n
        for cause, n in c["precision_causes"].items():
            row["causes"][cause] = row["causes"].get(cause, 0) + n
        row["undeclared"] += c.get("precision_undeclared", 0)
        w = c.get("precision_worst")
        if w and size_of(w.get("max_rel_error")) > size_of(row["max_rel_error"]):
            row["max_rel_error"], row["max_ulp_error"] = w.get("max_rel_error"), w.get("max_ulp_error")
    out = []
    for row in rows.values():
        seen = [o for o in PRECISION_OUTCOMES if row["counts"].get(o)]
        row["measured"] = seen[0] if seen else EXACT
        out.append(row)
    return sorted(out, key=lambda r: (r["rule"], r["framework"], r["mode"], r["dtype"]))


def answer(summary: dict[str, Any]) -> dict[str, Any]:
    """The run's answer, rule x framework: for each, the semantics the cases
    showed with the modes that follow each (`short`: fewer declared variants
    told apart than declared), and each precision finding with its dtypes,
    modes (`all_modes`: every mode of the framework shows it), largest
    relative size and most frequent cause; `cell` is a cell of that
    rule/framework/mode to link to (cpu, float32, dense where it ran)."""
    def rank(c: dict[str, Any]) -> tuple:
        return (c.get("skipped") is not None, c["device"] != "cpu", c["dtype"] != "float32", c.get("gradients", "dense") != "dense")

    link: dict[tuple[str, str, str], str] = {}
    for c in sorted(summary["cells"], key=rank):
        if not _crossed(c):
            link.setdefault((c["rule"], c["framework"], c["mode"]), c["id"])
    entries: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(rule: str, fw: str) -> dict[str, Any]:
        return entries.setdefault((rule, fw), {"semantics": {}, "precision": {}})

    for r in summary.get("semantics") or []:
        label = r["measured"].split(" (", 1)[0]
        group = entry(r["rule"], r["framework"])["semantics"].setdefault(
            label, {"measured": label, "short": r["measured"] != r["expected"], "declared": r["expected"], "modes": []})
        group["short"] = group["short"] or r["measured"] != r["expected"]
        group["modes"].append({"mode": r["mode"], "cell": link.get((r["rule"], r["framework"], r["mode"])),
                               "note": r["measured"] if r["measured"] != label else None})
    modes_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in summary.get("precision") or []:
        modes_of[(r["rule"], r["framework"])].add(r["mode"])
        if r["measured"] == EXACT and not r["undeclared"]:
            continue
        key = (r["measured"], bool(r["undeclared"]))
        group = entry(r["rule"], r["framework"])["precision"].setdefault(
            key, {"measured": r["measured"], "undeclared": bool(r["undeclared"]), "dtypes": [], "modes": [], "max_rel_error": 0.0, "causes": Counter()})
        if r["dtype"] not in group["dtypes"]:
            group["dtypes"].append(r["dtype"])
        if r["mode"] not in group["modes"]:
            group["modes"].append(r["mode"])
        group["max_rel_error"] = max(group["max_rel_error"], size_of(r.get("max_rel_error")))
        group["causes"].update(r.get("causes") or {})
    frameworks: list[str] = []
    for _, fw in entries:
        if fw not in frameworks:
            frameworks.append(fw)
    order = list(FRAMEWORKS)
    frameworks.sort(key=lambda f: (order.index(f.split("@")[0]) if f.split("@")[0] in order else len(order), f))
    out: dict[str, Any] = {"rules": sorted({rule for rule, _ in entries}), "frameworks": frameworks, "entries": {}}
    for (rule, fw), e in entries.items():
        precision = []
        for g in e["precision"].values():
            causes = g.pop("causes")
            g["cause"] = causes.most_common(1)[0][0] if causes else None
            g["all_modes"] = set(g["modes"]) == modes_of[(rule, fw)]
            g["modes"].sort()
            precision.append(g)
        out["entries"][f"{rule} {fw}"] = {"rule": rule, "framework": fw, "semantics": list(e["semantics"].values()), "precision": precision}
    return out



def _env_labels(envs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Side by side: (framework, env) -> a column label with the versions of
    each environment ("pinned tensorflow=2.15.1,keras=2.15.0")."""
    versions = version_labels(envs)
    out = {}
    for key, label in versions.items():
        fw, _, env = key.partition("@")
        if env:
            out[(fw, env)] = f"{env} {label}"
            out[(fw, "")] = f"pinned {versions.get(fw, '?')}"
    return out


def _by_environment(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records for the per-mode tables: a candidate environment's under
    its own framework name ("tensorflow@candidate"); the comparison of two
    environments left out (it has no semantics of its own)."""
    out = []
    for r in records:
        env = r.get("env") or ""
        if _crossed(r, ("env",)):
            continue
        out.append(dict(r, framework=f"{r['framework']}@{env}") if env else r)
    return out


def _semantics(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule and framework mode (over devices and dtypes): the variant the
    spec declares and what the cases showed. `known-divergence` cases are the
    ones that tell the declared variant from canonical; `conforms` cases did
    not tell them apart (or the mode declares canonical)."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    # Dense cells, and sparse cells for modes that have no dense ones (torch SparseAdam).
    dense_modes = {(r["rule"], r["framework"], r["mode"]) for r in records if r.get("gradients", "dense") == "dense"}
    for r in records:
        if "cell_status" in r or r.get("phase") in ("shrink", "minimal") or _crossed(r):
            continue
        key = (r["rule"], r["framework"], r["mode"])
        if r.get("gradients", "dense") != "dense" and key in dense_modes:
            continue
        row = rows.setdefault(
            key,
            {"rule": key[0], "framework": key[1], "mode": key[2], "expected": None, "distinguishing": 0, "conforms": 0, "diverges": {}, "stale": 0, "evidence": {}},
        )
        if "expected" in r and row["expected"] is None:
            row["expected"] = "+".join(r["expected"]) or "canonical"
        if r["outcome"] == KNOWN and r.get("matched_variant") and not r.get("known_issue"):
            row["distinguishing"] += 1
            for v in r.get("evidenced") or []:
                _bump(row["evidence"], v)
        elif r["outcome"] == CONFORMS:
            row["conforms"] += 1
        elif r["outcome"] in FAILING:
            _bump(row["diverges"], r.get("matched_variant") or "no known variant")
        if r.get("stale"):
            row["stale"] += 1
    out = []
    for row in rows.values():
        if row["expected"] is None:
            continue  # nothing ran (all unsupported)
        if row["diverges"]:
            row["measured"] = "diverges"
        elif row["expected"] == "canonical":
            row["measured"] = "canonical"
        else:
            declared = row["expected"].split("+")
            shown = [v for v in declared if row["evidence"].get(v)]
            unshown = [v for v in declared if v not in shown]
            row["measured"] = "+".join(shown) if shown else "canonical"
            if unshown:
                row["measured"] += f" (no case told {', '.join(unshown)} apart)"
        out.append(row)
    return sorted(out, key=lambda r: (r["rule"], r["framework"], r["mode"]))


def _crossed(r: dict[str, Any], axes: tuple[str, ...] = ("mode", "device", "gradients", "env")) -> bool:
    """A cross cell's record or summary cell, comparing its sides on one of `axes`."""
    cross = Cell.from_json(r).cross
    return cross is not None and cross.axis in axes


#: What a sparse cell's cases showed, in words (see `sparse_semantics`).
SPARSE_MEASURES = {
    "dense": "dense: untouched rows move as with a zero gradient",
    "lazy": "lazy: untouched rows keep their parameters and state",
    "mixed": "mixed: some cases dense, some lazy",
    "indistinguishable": "no case told dense and lazy apart",
    "neither": "neither dense nor lazy",
    "crash": "the framework raised or died on sparse gradients",
    "known issue": "every case ran into a declared framework issue",
    "unsupported": "unsupported",
}


def sparse_semantics(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule and framework mode: the sparse semantics the spec declares and
    the one the sparse cases showed (each case is judged against the declared
    variants with the dense and the lazy treatment of untouched rows), with the
    sparse-vs-dense oracle's agreement."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}

    def row_of(r: dict[str, Any]) -> dict[str, Any]:
        key = (r["rule"], r["framework"], r["mode"])
        return rows.setdefault(
            key,
            {
                "rule": key[0], "framework": key[1], "mode": key[2], "declared": None,
                "cases": {}, "duplicates": 0, "empty_steps": 0, "all_rows_steps": 0,
                "oracle": {"same": 0, "bit_identical": 0, "differs": 0, "diverges": 0},
                "unsupported": {}, "failing": 0,
            },
        )

    for r in records:
        gradients = r.get("gradients", "dense")
        if gradients == "dense" or r.get("phase") in ("shrink", "minimal") or _crossed(r, ("mode", "device", "env")):
            continue
        row = row_of(r)
        if "cell_status" in r:
            _bump(row["unsupported"], r.get("reason", ""))
            continue
        if r["outcome"] == UNSUPPORTED:
            _bump(row["unsupported"], r.get("reason", ""))
            continue
        if _crossed(r, ("gradients",)):
            if r["outcome"] in FAILING:
                row["oracle"]["diverges"] += 1
            elif r.get("bit_identical") or r.get("source") == "bit-identical":  # (`source`: results written before 0.x)
                row["oracle"]["bit_identical"] += 1
                row["oracle"]["same"] += 1
            elif r.get("sides_differ") or r.get("source") == "differs":
                row["oracle"]["differs"] += 1
            else:
                row["oracle"]["same"] += 1
            continue
        if "expected" in r:
            declared = "lazy" if "lazy" in r["expected"] else "dense"
            if row["declared"] is None:
                row["declared"] = declared
            elif declared not in row["declared"].split("/"):
                row["declared"] = "/".join(sorted(row["declared"].split("/") + [declared]))  # e.g. lazy only at momentum 0
        if r.get("sparse_semantics"):
            _bump(row["cases"], r["sparse_semantics"])
        elif r["outcome"] == CRASH:
            _bump(row["cases"], "crash")
        elif r.get("known_issue"):
            _bump(row["cases"], "known issue")  # e.g. a declared framework error
        if r["outcome"] in FAILING:
            row["failing"] += 1
        steps = r.get("sparse_steps") or {}
        row["duplicates"] += steps.get("duplicates", 0)
        row["empty_steps"] += steps.get("empty", 0)
        row["all_rows_steps"] += steps.get("all_rows", 0)
    out = []
    for row in rows.values():
        c = row["cases"]
        if not c:
            row["measured"] = "unsupported"
            row["reason"] = next(iter(row["unsupported"]), "")
        elif c.get("dense") and c.get("lazy"):
            row["measured"] = "dense/lazy" if row["declared"] == "dense/lazy" else "mixed"
        elif c.get("dense"):
            row["measured"] = "dense"
        elif c.get("lazy"):
            row["measured"] = "lazy"
        elif c.get("neither"):
            row["measured"] = "neither"
        elif c.get("crash") and not c.get("either"):
            row["measured"] = "crash"
        elif c.get("known issue") and not c.get("either"):
            row["measured"] = "known issue"
        else:
            row["measured"] = "indistinguishable"
        out.append(row)
    return sorted(out, key=lambda r: (r["rule"], r["framework"], r["mode"]))


def _shows_better(r: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """A case that shows a variant in the parameters beats one that shows it in a state slot only."""
    def in_params(x: dict[str, Any]) -> bool:
        return ((x.get("against_canonical") or {}).get("slot")) == "p"

    return than is None or (in_params(r) and not in_params(than))


def _bump(d: dict[str, int], key: str) -> None:
    d[key] = d.get(key, 0) + 1


def write_summary(directory: str | Path, sources: Iterable[str | Path] | None = None) -> dict[str, Any]:
    summary = summarize(list(sources) if sources is not None else [directory])
    Path(directory).mkdir(parents=True, exist_ok=True)
    tmp = Path(directory) / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, Path(directory) / SUMMARY)
    return summary
