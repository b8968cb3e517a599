"""Progress of a run, counted where the cells run and shown where the user looks.

Every run counts cells done, cases run and failing cells in a `Tally`. A run
that runs its cells itself shows the tally on its own bar; a shard of a
`--jobs` run writes it to `progress.json` in its directory instead (whole
files, replaced atomically, at most twice a second and at every cell's end),
and the parent sums its shards' files under one bar (`watch`). Where stderr
is not a terminal (a CI log) the bar is a line every `LOG_EVERY` seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

FILE = "progress.json"
WRITE_EVERY = 0.5  # seconds between a shard's writes within a cell
LOG_EVERY = 30.0  # seconds between progress lines where stderr is not a terminal


@dataclass
class Tally:
    cells: int = 0  # cells in the run (or the shard)
    cells_done: int = 0
    cases: int = 0
    failing: list[str] = field(default_factory=list)
    current: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Tally":
        return cls(**{k: data[k] for k in ("cells", "cells_done", "cases", "failing", "current") if k in data})

    @classmethod
    def total(cls, tallies: Iterable["Tally"]) -> "Tally":
        out = cls()
        for t in tallies:
            out.cells += t.cells
            out.cells_done += t.cells_done
            out.cases += t.cases
            out.failing += t.failing
        return out


class Counter:
    """The counting side: `start(cell)`, `case()` for each record, `done(cell, failed)`;
    `path` set: written there for a parent to read."""

    def __init__(self, cells: int, path: Path | None = None, on_change: Callable[[Tally], None] | None = None):
        self.tally = Tally(cells=cells)
        self.path = path
        self.on_change = on_change
        self._written = 0.0
        self._write(force=True)

    def start(self, cell_id: str) -> None:
        self.tally.current = cell_id
        self._write(force=False)

    def case(self, record: Any = None) -> None:
        if getattr(record, "phase", None) in ("shrink", "minimal"):
            return  # (counted as the summary counts cases: generated and fixed ones)
        self.tally.cases += 1
        self._write(force=False)

    def done(self, cell_id: str, failed: bool) -> None:
        self.tally.cells_done += 1
        if failed:
            self.tally.failing.append(cell_id)
        self._write(force=True)

    def _write(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._written < WRITE_EVERY:
            return
        self._written = now
        if self.on_change is not None:
            self.on_change(self.tally)
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.tally.to_json()), encoding="utf-8")
            os.replace(tmp, self.path)


def read(path: Path) -> Tally | None:
    try:
        return Tally.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None  # not written yet


class Display:
    """One bar (cells, with cases and failures beside it, and tqdm's ETA), or
    a plain line every LOG_EVERY seconds where `stream` is not a terminal.
    Newly failing cells are printed above the bar as they happen."""

    def __init__(self, total_cells: int, *, enabled: bool = True, stream: TextIO | None = None):
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.bar = tqdm(total=total_cells, unit="cell", file=self.stream, disable=not self.tty, dynamic_ncols=True)
        self._shown_failing: set[str] = set()
        self._logged = time.monotonic()
        self._t0 = time.monotonic()
        self.last = Tally(cells=total_cells)

    def show(self, tally: Tally) -> None:
        if not self.enabled:
            return
        for cid in tally.failing:
            if cid not in self._shown_failing:
                self._shown_failing.add(cid)
                self._write(f"FAIL {cid}")
        if self.tty:
            self.bar.update(tally.cells_done - self.bar.n)
            self.bar.set_postfix_str(f"{tally.cases} cases, {len(tally.failing)} failing" + (f", {tally.current}" if tally.current else ""), refresh=True)
        elif time.monotonic() - self._logged >= LOG_EVERY:
            self._logged = time.monotonic()
            self._write(self.line(tally))
        self.last = tally

    def line(self, tally: Tally) -> str:
        elapsed = time.monotonic() - self._t0
        total = self.bar.total or tally.cells
        eta = ""
        if tally.cells_done and total:
            eta = f", about {elapsed * (total - tally.cells_done) / tally.cells_done:.0f} s left"
        return f"progress: {tally.cells_done}/{total} cells, {tally.cases} cases, {len(tally.failing)} failing, {elapsed:.0f} s{eta}"

    def _write(self, text: str) -> None:
        if self.tty:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and not self.tty:
            self._write(self.line(self.last))  # a log ends on the final count
        self.bar.close()


def watch(shard_dirs: list[Path], alive: Callable[[], bool], display: Display, every: float = 0.5) -> Tally:
    """Sum the shards' progress files under `display` until `alive()` is false."""
    def total() -> Tally:
        tallies = [read(d / FILE) for d in shard_dirs]
        t = Tally.total(t for t in tallies if t is not None)
        t.cells = display.bar.total or t.cells
        t.current = ", ".join(x.current for x in tallies if x is not None and x.current and x.cells_done < x.cells)[:80]
        return t

    while alive():
        display.show(total())
        time.sleep(every)
    last = total()
    display.show(last)
    return last
