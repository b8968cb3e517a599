"""What a run prints: one screen that answers, and every detail on request.

`print_answer` is the end of `conformance run` and `merge`: totals, the
failing cells with their replay commands and report links, what each
framework/mode follows per rule, its precision findings, the skipped cells
grouped by reason, and where the report is. `--verbose` adds the long forms
below it (`print_cells`, `print_semantics`, `print_precision`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from .summary import answer, cell_fails

WIDTH = 132  # a wide terminal's line: entries longer than this are cut with an ellipsis


def cell_link(report: str | Path | None, cell_id: str) -> str:
    """The report's address of one cell (its drill-down opens on load)."""
    if report is None:
        return f"#{cell_id}"
    return f"{Path(report).resolve().as_uri()}#{cell_id}"


def _cut(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _modes(modes: Iterable[str]) -> str:
    return " ".join(modes)


def semantics_lines(summary: dict[str, Any]) -> list[str]:
    """One line per rule and framework (`results.answer`): each semantics the
    cases showed, after the modes that follow it; `*` where the cases told
    fewer of the declared variants apart than the spec declares."""
    lines, last = [], None
    for e in answer(summary)["entries"].values():
        text = "; ".join(f"{_modes(m['mode'] for m in g['modes'])}: {g['measured']}{'*' if g['short'] else ''}" for g in e["semantics"])
        if text:
            lines.append(_cut(f"  {e['rule'] if e['rule'] != last else '':<9} {e['framework']:<11} {text}"))
            last = e["rule"]
    return lines


def sparse_line(summary: dict[str, Any]) -> str | None:
    """Which framework/modes applied sparse gradients lazily (or either way), per rule."""
    by: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    measured = False
    for r in summary.get("sparse") or []:
        if r.get("measured") in (None, "unsupported", "indistinguishable"):
            continue
        measured = True
        if r["measured"] != "dense":
            by[r["measured"]][f"{r['framework']}/{r['mode']}"].append(r["rule"])
    if not measured:
        return None
    parts = [f"{how}: " + ", ".join(f"{fm} ({_modes(rules)})" for fm, rules in modes.items()) for how, modes in by.items()]
    return _cut("sparse gradients: " + "; ".join(parts + ["dense in every other mode that takes them"]), 3 * WIDTH)


def precision_lines(summary: dict[str, Any]) -> list[str]:
    """One line per rule and framework with a precision finding (`results.answer`):
    each finding with its dtypes, its modes where not all of the framework's
    show it, and for a precision loss its largest relative size."""
    lines, last = [], None
    for e in answer(summary)["entries"].values():
        entries = [
            f"{g['measured']}{' UNDECLARED' if g['undeclared'] else ''} {'/'.join(g['dtypes'])}"
            + ("" if g["all_modes"] else f" [{_modes(g['modes'])}]")
            + (f" (<= {g['max_rel_error']:.2g} rel)" if g["max_rel_error"] and g["measured"] == "precision-loss" else "")
            for g in e["precision"]
        ]
        if entries:
            lines.append(_cut(f"  {e['rule'] if e['rule'] != last else '':<9} {e['framework']:<11} {'; '.join(entries)}"))
            last = e["rule"]
    return lines


def skipped_lines(summary: dict[str, Any], limit: int = 6) -> list[str]:
    """Cells that did not run or were unsupported on every case, grouped by reason."""
    reasons: Counter = Counter()
    for c in summary["cells"]:
        if c.get("skipped"):
            reasons[c["skipped"]] += 1
        elif c["outcome"] == "unsupported" and c.get("unsupported_reasons"):
            reason = max(c["unsupported_reasons"], key=c["unsupported_reasons"].get)
            # a cross cell says which side was unsupported ("updater on cpu unsupported: ...");
            # grouped with the plain cells of the same reason (the report keeps the side)
            side, sep, rest = reason.partition(" unsupported: ")
            reasons[rest if sep and " on " in side else reason] += 1
    lines = [_cut(f"  {n:>5}  {reason}") for reason, n in reasons.most_common(limit)]
    rest = reasons.most_common()[limit:]
    if rest:
        lines.append(f"  {sum(n for _, n in rest):>5}  for {len(rest)} other reason(s) (--verbose lists every cell)")
    return lines


def print_answer(
    summary: dict[str, Any],
    *,
    report: str | Path | None,
    replays: dict[str, str] | None = None,
    fail_on: Iterable[str] = (),
    wall: float | None = None,
    verbose: bool = False,
) -> None:
    """The end of a run, on one screen (`verbose`: every cell and the long tables first)."""
    if verbose:
        print_cells(summary)
        print_semantics(summary)
        print_precision(summary)
        print()
    cells = summary["cells"]
    cases = sum(c.get("examples") or 0 for c in cells)
    failing = failing_cells(summary, fail_on)
    took = f" in {wall:.0f} s" if wall is not None else ""
    print(f"{len(cells)} cell(s), {cases} case(s){took}: {len(failing)} failing")
    print("  semantics: " + ", ".join(f"{k} {v}" for k, v in summary["totals"].items()))
    if summary.get("precision_totals"):
        undeclared = sum(1 for c in cells if c.get("precision_undeclared"))
        print("  precision: " + ", ".join(f"{k} {v}" for k, v in summary["precision_totals"].items())
              + f" (cells; {undeclared} undeclared)")
    by_id = {c["id"]: c for c in cells}
    if failing:
        print("failing:")
        for cid in failing[:10]:
            c = by_id.get(cid, {})
            reason = ((c.get("minimal") or {}).get("reason") or "")
            precision = c.get("precision") if c.get("precision") not in (None, "exact") else None
            print(_cut(f"  {cid}: {c.get('outcome')}{f' (precision: {precision})' if precision else ''}{': ' + reason if reason else ''}"))
            if replays and cid in replays:
                print(f"    replay: {replays[cid]}")
            print(f"    report: {cell_link(report, cid)}")
        if len(failing) > 10:
            print(f"  ... and {len(failing) - 10} more (the report lists them all)")
    lines = semantics_lines(summary)
    if lines:
        print("semantics (per rule and framework: what the cases showed, and the modes that follow it; * less than declared):")
        print("\n".join(lines))
    line = sparse_line(summary)
    if line:
        print(line)
    lines = precision_lines(summary)
    if lines:
        print("precision findings (against the exact rule, beyond rounding in the case's own dtype; causes: --verbose or the report):")
        print("\n".join(lines))
    differs = [d for d in summary.get("defaults") or [] if d.get("differs")]
    if differs:
        print(f"defaults: {len(differs)} differ from the canonical ones (`conformance list --defaults`, or the report)")
    lines = skipped_lines(summary)
    if lines:
        print("not run or unsupported (cells, by reason):")
        print("\n".join(lines))
    if report is not None:
        print(f"report: {Path(report).resolve().as_uri()}")


def print_sparse(rows: list[dict[str, Any]], source: str | None) -> None:
    print(
        "Sparse gradients (rule framework/mode: measured [declared]; cases: how many showed dense, lazy,"
        " or could not tell; sparse~dense: the same gradient given sparse and dense)"
        + (f", from {source}:" if source else "; no run measured them yet (`conformance run --gradients sparse,sparse~dense`):")
    )
    for r in rows:
        declared = r["declared"] + ("+" + "+".join(r["sparse_expect"]) if r.get("sparse_expect") else "")
        measured = r["measured"] or ("unsupported (declared; not run)" if r["declared"] == "unsupported" else "not measured")
        said = f" [declared {declared}]"
        if r["measured"] in (r["declared"], "indistinguishable", "known issue") and not r.get("sparse_expect") or r["declared"] == "?":
            said = ""
        if r["measured"] == "unsupported" or (r["measured"] is None and r["declared"] == "unsupported"):
            said, detail = "", f": {r.get('reason') or ''}"
        else:
            cases = ", ".join(f"{k} {v}" for k, v in sorted((r.get("cases") or {}).items()))
            o = r.get("oracle") or {}
            oracle = ""
            if any(o.values()):
                oracle = f"; sparse~dense: same {o.get('same', 0)} (bit-identical {o.get('bit_identical', 0)}), differs {o.get('differs', 0)}, diverges {o.get('diverges', 0)}"
            detail = f" (cases: {cases}{oracle})" if cases or oracle else ""
        print(f"  {r['rule']:<9} {r['framework'] + '/' + r['mode']:<22} {measured}{said}{detail}")


def print_semantics(summary: dict[str, Any]) -> None:
    sparse = [r for r in summary.get("sparse") or [] if r["measured"] != "unsupported"]
    if sparse:
        print_sparse(
            [dict(r, declared=r["declared"] or "?", sparse_expect=[]) for r in sparse], "this run"
        )
    rows = summary.get("semantics") or []
    if rows:
        print("semantics (rule framework/mode: what the cases showed; the spec's declaration in brackets when it differs):")
        for r in rows:
            said = "" if r["measured"] == r["expected"] else f" [declared {r['expected']}]"
            told = ", shown by " + ", ".join(f"{v} {n}" for v, n in r["evidence"].items()) + " case(s)" if r["evidence"] else ""
            print(f"  {r['rule']:<9} {r['framework'] + '/' + r['mode']:<22} {r['measured']}{said}{told}")
    differs = [d for d in summary.get("defaults") or [] if d.get("differs")]
    if differs:
        print("defaults that differ from the canonical ones (introspected; `conformance list --defaults` shows all):")
        for d in differs:
            print(f"  {d['rule']:<9} {d['framework'] + '/' + d['mode']:<22} {d['hyperparameter']}: {d['framework_default']} (canonical {d['canonical_default']}; {d['optimizer']} {d['argument']})")


def failing_cells(summary: dict[str, Any], fail_on: Any = ()) -> list[str]:
    """The failing cells: the summary's, and those `--fail-on` adds."""
    return sorted(set(summary["failed"]) | {c["id"] for c in summary["cells"] if cell_fails(c, fail_on)})


def print_precision(summary: dict[str, Any]) -> None:
    rows = [r for r in summary.get("precision") or [] if r["measured"] != "exact" or r["undeclared"]]
    judged = summary.get("precision") or []
    if not judged:
        return
    print(f"precision (against the exact rule, beyond what rounding in the case's own dtype explains;"
          f" {len(judged) - len(rows)} rule/framework/mode/dtype row(s) exact):")
    for r in rows:
        counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items())
        size = f", up to {float(r['max_rel_error']):.2g} relative" if r.get("max_rel_error") not in (None, 0, 0.0) else ""
        flag = f" UNDECLARED {r['undeclared']}" if r["undeclared"] else ""
        cause = max(r["causes"], key=r["causes"].get) if r["causes"] else ""
        print(f"  {r['rule']:<9} {r['framework'] + '/' + r['mode']:<22} {r['dtype']:<9} {r['measured']}{flag} ({counts}{size})")
        if cause:
            print(f"      {cause[:300]}")


def print_cells(summary: dict[str, Any]) -> None:
    for c in summary["cells"]:
        counts = ", ".join(f"{k} {v}" for k, v in c["counts"].items())
        follows = ", ".join(c["matched_variants"]) or ""
        extra = f" skipped: {c['skipped']}" if c.get("skipped") else ""
        if c.get("known_issues"):
            extra += " known issue"
        precision = c.get("precision") or ""
        precision = f" precision: {precision}{' (UNDECLARED)' if c.get('precision_undeclared') else ''}" if precision and precision != "exact" else ""
        print(f"  {c['id']:<48} {c['outcome']:<17} {counts}{' follows ' + follows if follows else ''}{precision}{extra}")
    print("totals: " + ", ".join(f"{k} {v}" for k, v in summary["totals"].items()))
    if summary.get("precision_totals"):
        print("precision totals: " + ", ".join(f"{k} {v}" for k, v in summary["precision_totals"].items()))
