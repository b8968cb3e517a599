"""Where a run's time goes: the breakdown of a finished results directory.

For each shard (or the run itself): its wall time (the environment file's
duration), the time inside cells split into the framework's own execution
(the adapter's answer, worker round trip included) and the harness's
judging (reference, rounding model, precision axis, classification), cross
cells apart from plain ones (their sides' framework runs apart from their
comparison), and what is left outside cells (worker
start-up, hypothesis drawing cases, writing records). Then the merge: the
summary and the report written again here, timed, with their sizes. Every
figure is printed as a share of the whole, so two runs on a noisy shared
machine compare by their ratios, not by seconds.

    python benchmarks/run_breakdown.py reports/<run-id> [--no-rewrite]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from conformance.cells import Cell
from conformance.report import write_report
from conformance.results import _result_files
from conformance.summary import summarize


def _cross(r: dict) -> bool:
    return Cell.from_json(r).is_cross


def breakdown(directory: Path) -> dict:
    shards = []
    per_framework: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for f in _result_files(directory):
        env_file = f.parent / f.name.replace("results", "environment", 1).replace(".jsonl", ".json")
        env = json.loads(env_file.read_text(encoding="utf-8")) if env_file.exists() else {}
        row = {"name": str(f.parent.relative_to(directory)) or ".", "wall": float(env.get("duration_s") or 0.0),
               "framework": 0.0, "judging": 0.0, "cross_framework": 0.0, "cross": 0.0, "cases": 0}
        for line in f.open(encoding="utf-8"):
            r = json.loads(line)
            if "cell_status" in r:
                continue
            s, fw = float(r.get("seconds") or 0.0), float(r.get("framework_seconds") or 0.0)
            row["cases"] += 1
            key = r["framework"] + ("/" + r["mode"] if not _cross(r) else " cross")
            per_framework[key]["seconds"] += s
            per_framework[key]["framework"] += fw
            per_framework[key]["cases"] += 1
            if _cross(r):
                # a cross cell often runs before its sides' plain cells: it pays
                # for the framework runs that they then find remembered
                row["cross_framework"] += fw
                row["cross"] += s - fw
            else:
                row["framework"] += fw
                row["judging"] += s - fw
        row["outside"] = max(row["wall"] - row["framework"] - row["judging"] - row["cross_framework"] - row["cross"], 0.0)
        shards.append(row)
    return {"shards": shards, "per_framework": per_framework}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--no-rewrite", action="store_true", help="do not time writing the summary and report again")
    args = ap.parse_args()
    b = breakdown(args.directory)
    total = {k: sum(s[k] for s in b["shards"]) for k in ("wall", "framework", "judging", "cross_framework", "cross", "outside", "cases")}
    print(f"{args.directory}: {len(b['shards'])} shard(s), {total['cases']} records, {total['wall']:.0f} CPU-side s of shard wall time")
    for k, what in (("framework", "framework execution of plain cells (adapter answer, worker round trip)"),
                    ("cross_framework", "framework execution of cross cells' sides (runs their plain cells then remember)"),
                    ("judging", "judging plain cells (reference, rounding model, precision axis, verdict)"),
                    ("cross", "judging cross cells (the two sides' comparison)"),
                    ("outside", "outside cells (worker start, drawing cases, hypothesis, writing records)")):
        print(f"  {100 * total[k] / max(total['wall'], 1e-9):5.1f} %  {total[k]:8.1f} s  {what}")
    print("per framework/mode (cases, share of in-cell time, ms per case, of it framework):")
    inside = sum(v["seconds"] for v in b["per_framework"].values()) or 1.0
    for key, v in sorted(b["per_framework"].items(), key=lambda kv: -kv[1]["seconds"])[:20]:
        print(f"  {key:<32} {int(v['cases']):>6} {100 * v['seconds'] / inside:5.1f} %  {1000 * v['seconds'] / v['cases']:7.1f} ms"
              f"  ({1000 * v['framework'] / v['cases']:.1f} ms)")
    if args.no_rewrite:
        return
    t0 = time.perf_counter()
    summary = summarize([args.directory])
    t1 = time.perf_counter()
    out = args.directory / "breakdown-rewrite"
    out.mkdir(exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, allow_nan=False), encoding="utf-8")
    t2 = time.perf_counter()
    write_report(out, summary)
    t3 = time.perf_counter()
    print(f"merge: read and summarize {t1 - t0:.1f} s, write summary.json {t2 - t1:.1f} s"
          f" ({(out / 'summary.json').stat().st_size / 1e6:.1f} MB), write index.html {t3 - t2:.1f} s"
          f" ({(out / 'index.html').stat().st_size / 1e6:.1f} MB); {100 * (t3 - t0) / max(total['wall'] / max(len(b['shards']), 1), 1e-9):.0f} % of a shard's wall time")


if __name__ == "__main__":
    main()
