"""The results store: results*.jsonl and environment*.json as a run goes.

Every executed case is one JSON line, written and flushed at once, so a
killed run keeps everything it had. A record carries its full case when it
failed, when it is the worst case of its cell so far, or when it is a
cell's shrunk minimal case; the conforming rest carry only their numbers.
Several writers (pytest-xdist workers, shards on other machines) write
their own `results-<name>.jsonl`; `summarize` reads them all, so merging
shards is reading several directories.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .outcomes import KNOWN

#: the summary a run ends with (`conformance.summary`), one of a run's files
SUMMARY = "summary.json"


class ResultWriter:
    """Appends records to `<dir>/results-<name>.jsonl`, one flushed line each."""

    def __init__(self, directory: str | Path, name: str = "main"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"results-{name}.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        self._worst: dict[str, float] = {}
        self._shown: dict[str, str | None] = {}  # cell -> the slot its shown case differs in

    def write(self, record: Any) -> None:
        cell = record.cell.id
        margin = record.margin
        worst = margin > self._worst.get(cell, -1.0) and record.case is not None and record.verdict is not None
        if worst:
            self._worst[cell] = margin
        # the first case of a cell that tells its declared variant from the
        # canonical rule keeps its data too: the report shows the divergence on it
        # (preferably one whose parameters, not only a state slot, show it:
        # that is what a reproducer prints)
        shows = (
            record.outcome == KNOWN and record.verdict is not None and record.verdict.matched_variant
            and record.case is not None and self._shown.get(cell) != "p"
        )
        if shows:
            slot = record.verdict.against_canonical.slot if record.verdict.against_canonical else None
            shows = cell not in self._shown or slot == "p"
            if shows:
                self._shown[cell] = slot
        with_case = record.failing or record.phase == "minimal" or worst or record.kind == "fixed" or shows
        line = record.to_json(with_case=with_case)
        if worst:
            line["worst_so_far"] = True
        if shows:
            line["shows_variant"] = True
        self.write_line(line)

    def write_line(self, data: dict[str, Any]) -> None:
        self._file.write(json.dumps(data, allow_nan=False, default=_default) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def clear_run(directory: str | Path) -> list[Path]:
    """Remove an earlier run's files from `directory` (its results, environments,
    shards, progress, minimal cases, summary and report), so that a run into
    the same --out reports itself only; anything else there is left alone."""
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    patterns = ("results*.jsonl", "environment*.json", "minimal-*.json", "progress.json", SUMMARY, "index.html", "shard-*-of-*.log")
    for pattern in patterns:
        for f in d.glob(pattern):
            f.unlink()
            removed.append(f)
    for shard in d.glob("shard-*-of-*"):
        if shard.is_dir():
            removed += clear_run(shard)
            if not any(shard.iterdir()):
                shard.rmdir()
    return removed


def _default(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_cell_status(writer: ResultWriter, cell: Any, status: str, reason: str, environment: dict | None = None) -> None:
    """A cell that did not run (skipped device, framework absent) still appears in the results."""
    writer.write_line({"cell": cell.id, **cell.to_json(), "cell_status": status, "reason": reason})


def _result_files(d: Path) -> list[Path]:
    # (a `--jobs` run keeps its shards in shard-K-of-N/ subdirectories)
    return sorted([*d.glob("results*.jsonl"), *d.glob("shard-*/results*.jsonl")]) if d.is_dir() else [d]


def _read_file(f: Path) -> list[dict[str, Any]]:
    out = []
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                # the last line of a killed run may be cut short
                continue
    return out


def read_records(directories: Iterable[str | Path]) -> list[dict[str, Any]]:
    return [r for d in directories for f in _result_files(Path(d)) for r in _read_file(f)]


def version_label(versions: dict[str, Any] | None) -> str:
    """A framework's versions in a few characters (`torch=2.13.0+cpu`, `tensorflow=2.21.0,keras=3.15.1`)."""
    skip = {"numpy", "python", "keras_backend", "cuda"}
    return ",".join(f"{k}={v}" for k, v in (versions or {}).items() if k not in skip and v)


def read_versioned_records(directories: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every record of every directory. Where the merged directories ran one
    framework in more than one version (two machines, a pinned and a
    candidate release), its records get `version` and their cell ids an
    `@<version>` suffix, so the versions stay apart as cells of their own."""
    sources: list[tuple[list[dict[str, Any]], dict[str, str]]] = []
    labels: dict[str, set[str]] = defaultdict(set)
    for d in directories:
        for f in _result_files(Path(d)):
            env_file = f.parent / (f.name.replace("results", "environment", 1).replace(".jsonl", ".json"))
            versions: dict[str, str] = {}
            if env_file.is_file():
                env = json.loads(env_file.read_text(encoding="utf-8"))
                for fw, info in (env.get("frameworks") or {}).items():
                    if isinstance(info, dict) and info.get("versions"):
                        versions[fw] = version_label(info["versions"])
                        labels[fw].add(versions[fw])
            sources.append((_read_file(f), versions))
    split = {fw for fw, seen in labels.items() if len(seen) > 1}
    out = []
    for records, versions in sources:
        for r in records:
            fw = r.get("framework")
            if fw in split and fw in versions:
                r["version"] = versions[fw]
                r["cell"] = f"{r['cell']}@{versions[fw]}"
            out.append(r)
    return out


def read_environments(directories: Iterable[str | Path]) -> list[dict[str, Any]]:
    envs = []
    for d in directories:
        for f in sorted([*Path(d).glob("environment*.json"), *Path(d).glob("shard-*/environment*.json")]):
            envs.append(json.loads(f.read_text(encoding="utf-8")))
    return envs


def write_environment(directory: str | Path, name: str, data: dict[str, Any]) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / f"environment-{name}.json").write_text(json.dumps(data, indent=2, default=_default), encoding="utf-8")


def environment(run: dict[str, Any], frameworks: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": run,
        "host": {
            "machine": platform.machine(), "processor": platform.processor(), "cpu": cpu_name(),
            "system": platform.platform(), "python": platform.python_version(), "node": platform.node(),
            "cpus": os.cpu_count(),
        },
        "frameworks": frameworks,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_labels(envs: Iterable[dict[str, Any]]) -> dict[str, str]:
    """{framework (or "framework@candidate"): version label} over environment files."""
    versions: dict[str, str] = {}
    for env in envs:
        for key, info in (env.get("frameworks") or {}).items():
            if isinstance(info, dict) and info.get("versions"):
                versions[key] = version_label(info["versions"])
    return versions
