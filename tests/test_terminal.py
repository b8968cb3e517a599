"""What a run prints: progress throughout whatever --jobs is, and an end
that fits one screen (every cell only with --verbose)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import progress
from conformance.progress import Counter, Display, Tally, watch


def test_shards_progress_sums_under_one_display(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    dirs = [tmp_path / "shard-1-of-2", tmp_path / "shard-2-of-2"]
    for d in dirs:
        d.mkdir()
    a = Counter(3, path=dirs[0] / progress.FILE)
    b = Counter(2, path=dirs[1] / progress.FILE)
    a.start("adam[torch-forloop-cpu-float32]")
    for _ in range(7):
        a.case()
    a.done("adam[torch-forloop-cpu-float32]", failed=False)
    b.start("sgd[jax-eager-cpu-float16]")
    b.case()
    b.done("sgd[jax-eager-cpu-float16]", failed=True)
    assert json.loads((dirs[1] / progress.FILE).read_text())["failing"] == ["sgd[jax-eager-cpu-float16]"]
    stream = io.StringIO()  # not a terminal: plain lines
    display = Display(5, stream=stream)
    polls = iter([True, False])
    total = watch(dirs, lambda: next(polls), display, every=0.0)
    display.close()
    assert (total.cells_done, total.cases, total.failing) == (2, 8, ["sgd[jax-eager-cpu-float16]"])
    out = stream.getvalue()
    assert "FAIL sgd[jax-eager-cpu-float16]" in out
    assert "progress: 2/5 cells, 8 cases, 1 failing" in out


def test_a_shard_that_has_not_written_yet_counts_nothing(tmp_path):
    assert progress.read(tmp_path / progress.FILE) is None
    assert Tally.total([]).cells_done == 0


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "conformance", "run", "--rules", "sgd,adam", "--frameworks", "torch", "--dtypes", "float32,float16",
           "--examples", "2", "--out", str(tmp_path / "out"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def torch_present():
    pytest.importorskip("torch")


def test_the_end_of_a_run_fits_one_screen_and_verbose_lists_every_cell(tmp_path, torch_present):
    done = _run(tmp_path, "--jobs", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    cells = [c["id"] for c in summary["cells"]]
    out = done.stdout
    # the parent showed the whole run's progress (the shards run with --no-progress)
    assert f"progress: {len(cells)}/{len(cells)} cells" in done.stderr
    for shard in (1, 2):
        final = json.loads((tmp_path / "out" / f"shard-{shard}-of-2" / progress.FILE).read_text())
        assert final["cells_done"] == final["cells"] > 0
    lines = out.splitlines()
    assert len(lines) <= 60, out
    assert f"{len(cells)} cell(s), " in lines[1] and "0 failing" in lines[1]
    assert any(line.startswith("semantics (per rule and framework") for line in lines)
    assert any("sgd" in line and "forloop" in line and "canonical" in line for line in lines)
    assert any("CUDA is not available" in line for line in lines)  # skipped cells: one line per reason
    assert not any(line.strip().startswith("adam[torch-forloop-cuda") for line in lines)
    assert lines[-2].startswith("report: file://") and lines[-2].endswith("index.html")
    verbose = _run(tmp_path, "--jobs", "1", "--no-progress", "--verbose", "--seed", "1")
    assert verbose.returncode == 0, verbose.stdout[-3000:]
    listed = {line.split()[0] for line in verbose.stdout.splitlines() if line.startswith("  ") and "[" in line.split()[0]}
    assert set(cells) <= listed
    # the second run into the same directory reports itself only (the first's shards are gone)
    again = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(again["environments"]) == 1 and not list((tmp_path / "out").glob("shard-*"))
    assert sum(c["examples"] for c in again["cells"]) == sum(c["examples"] for c in summary["cells"])


def test_a_pytest_failure_names_the_cell_s_address_in_the_report(tmp_path):
    from types import SimpleNamespace

    from conformance.pytest_plugin import CellFailed

    cell = SimpleNamespace(id="adam[tensorflow-eager-cpu-float32]")
    result = SimpleNamespace(cell=cell, outcome="diverges", precision=None, error=None, minimal=None)
    text = CellFailed(result, tmp_path / "index.html").describe()
    assert f"report: {(tmp_path / 'index.html').resolve().as_uri()}#adam[tensorflow-eager-cpu-float32]" in text
    assert "report:" not in CellFailed(result).describe()  # no --conformance-out, no report


def test_the_shards_of_a_jobs_run_get_the_parent_s_options_from_the_options_table():
    """The children's arguments come from the parsed options (issue: argv was
    filtered by hand, and `explore` rewrote it to pass its profile on)."""
    from conformance.cli import build_parser
    from conformance.session import OPTIONS, option_argv

    argv = ["run", "--frameworks", "torch,jax", "--python", "mxnet=/x/python", "--python", "jax=/y/python", "--examples", "3",
            "--profile", "dev", "--seed", "5", "--shard", "1/2", "--fail-on", "stalled", "--timeout", "9.5"]
    parent = build_parser().parse_args(argv)
    child = build_parser().parse_args(["run", *option_argv(parent, leave=("--seed", "--shard"))])
    for _, _, kwargs in OPTIONS:
        dest = kwargs["dest"]
        expected = None if dest in ("conformance_seed", "shard") else getattr(parent, dest)
        assert getattr(child, dest) == expected, dest


def test_seed_last_replays_the_previous_run_s_seed(tmp_path, monkeypatch, capsys):
    from conformance.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["run", "--rules", "sgd", "--frameworks", "torch", "--modes", "forloop", "--devices", "cpu", "--dtypes", "float32",
            "--gradients", "dense", "--examples", "0", "--jobs", "1", "--no-progress", "--isolation", "inprocess"]
    assert main([*argv, "--seed", "last", "--out", "a"]) == 2
    assert "--seed last: no earlier run here recorded its seed" in capsys.readouterr().err
    assert main([*argv, "--profile", "dev", "--out", "b"]) == 0
    drawn = json.loads(next((tmp_path / "b").glob("environment-*.json")).read_text())["run"]["seed"]
    assert main([*argv, "--profile", "dev", "--seed", "last", "--out", "c"]) == 0
    assert json.loads(next((tmp_path / "c").glob("environment-*.json")).read_text())["run"]["seed"] == drawn


def test_a_cross_cells_side_prefix_does_not_split_a_skip_reason():
    from conformance.terminal import skipped_lines

    why = "mxnet Ftrl keeps its state in float32 whatever the weight's dtype"
    summary = {"cells": [
        {"outcome": "unsupported", "unsupported_reasons": {why: 3}},
        {"outcome": "unsupported", "unsupported_reasons": {f"updater on cpu unsupported: {why}": 3}},
    ]}
    (line,) = skipped_lines(summary)
    assert line.split(None, 1) == ["2", why]
