"""Cells that draw the same cases share their work, and change no verdict by it.

A seed draws the same cases for the modes of a framework whose strategies
agree, and a cross cell draws its first side's cases: the framework run of a
request and the reference of a case are computed once per process
(`execution.AnswerMemo`, `tolerance.shared_reference`), and the shards keep
such cells together (`cells.shard`). Real torch, nothing mocked.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conformance import tolerance
from conformance.execution import InProcessHost, request_key
from conformance.cells import Cell, Cross, enumerate_cells, family, shard
from conformance.driver import PROFILES, run_cell
from conformance.judging import build_request

torch = pytest.importorskip("torch")

FAST = PROFILES["ci"]


def _request(catalog, shift: float = 0.0):
    from conformance.case import Case

    spec = catalog.get("adam")
    mode = spec.mode("torch", "forloop")
    case = Case("adam", "float32", np.array([0.5, -1.0]) + shift, np.array([[0.25, 1.0], [-0.5, 2.0]]),
                dict(spec.defaults), "torch", mode="forloop", device="cpu")
    return build_request(spec, mode, case)


def test_a_repeated_request_is_answered_from_the_memo_and_equals_a_fresh_run(catalog):
    host = InProcessHost("torch")
    first = host.run(_request(catalog))
    again = host.run(_request(catalog))
    assert first.status == again.status == "ok"
    assert host.memo.hits == 1 and again.seconds == 0.0
    np.testing.assert_array_equal(np.asarray(first.result["params"]), np.asarray(again.result["params"]))
    other = host.run(_request(catalog, shift=1.0))  # other parameters: run again
    assert host.memo.hits == 1 and other.status == "ok"
    assert not np.array_equal(np.asarray(other.result["params"]), np.asarray(first.result["params"]))
    assert request_key(_request(catalog).wire()) != request_key(_request(catalog, shift=1.0).wire())


def test_a_crash_is_not_remembered(tmp_path, catalog):
    host = InProcessHost("torch")
    request = replace(_request(catalog), optimizer="torch.optim.NoSuchOptimizer")
    first, again = host.run(request), host.run(request)
    assert first.status != "ok" and again.status == first.status
    assert host.memo.hits == (1 if first.status == "unsupported" else 0)


def test_a_cross_cell_runs_its_sides_from_the_plain_cells_runs_with_the_same_verdicts(catalog):
    spec = catalog.get("adam")
    plain = [Cell("adam", "torch", m, "cpu", "float32") for m in ("forloop", "foreach")]
    crossed = Cell("adam", "torch", "forloop", "cpu", "float32", cross=Cross("mode", "foreach"))
    host = InProcessHost("torch")
    for cell in plain:
        run_cell(spec, cell, host, profile=FAST, seed=3, examples=6, database=None)
    before = host.memo.hits
    shared = run_cell(spec, crossed, host, profile=FAST, seed=3, examples=6, database=None)
    generated = [r for r in shared.records if r.kind == "cross"]
    assert generated and host.memo.hits - before >= 2 * len(generated)  # both sides of every generated case
    fresh = run_cell(spec, crossed, InProcessHost("torch"), profile=FAST, seed=3, examples=6, database=None)
    assert [(r.outcome, r.reason) for r in shared.records] == [(r.outcome, r.reason) for r in fresh.records]
    # a cross case reports the framework time its sides spent: none where both were remembered
    assert all(r.framework_seconds == 0.0 for r in generated)
    assert all(r.framework_seconds > 0.0 for r in fresh.records if r.kind == "cross")


def test_a_shared_reference_is_the_reference(catalog):
    from conformance.case import Case

    spec = catalog.get("rmsprop")
    tol = tolerance.tolerance_for(spec, "bfloat16")
    grads = np.array([[0.25, 1.0, -3.0], [-0.5, 2.0, 1e-3]])
    a = Case("rmsprop", "bfloat16", np.array([0.5, -1.0, 2.0]), grads, dict(spec.defaults), "torch", mode="forloop")
    b = Case("rmsprop", "bfloat16", np.array([0.5, -1.0, 2.0]), grads.copy(), dict(spec.defaults), "tensorflow", mode="eager")
    assert a.content_digest == b.content_digest
    shared = tolerance.SharedReferences()
    ra, rb = shared(spec, a, (), tol), shared(spec, b, (), tol)
    assert ra is rb
    direct = tolerance.reference(spec, a, (), tol)
    np.testing.assert_array_equal(ra.values.params, direct.values.params)
    np.testing.assert_array_equal(ra.bound.params, direct.bound.params)
    c = Case("rmsprop", "bfloat16", np.array([0.5, -1.0, 2.0]), grads, {**spec.defaults, "eps": 1e-3}, "torch")
    assert c.content_digest != a.content_digest and shared(spec, c, (), tol) is not ra


def test_shards_keep_families_together_cover_every_cell_once_and_balance(catalog):
    cells = enumerate_cells(catalog)
    parts = [shard(cells, k, 3) for k in (1, 2, 3)]
    assert sorted(c.id for p in parts for c in p) == sorted(c.id for c in cells)
    owner = {}
    for k, part in enumerate(parts):
        for c in part:
            assert owner.setdefault(family(c), k) == k
    biggest = max(sum(1 for c in cells if family(c) == f) for f in owner)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= biggest
    # the split depends on the selected cells, not their order
    assert sorted(c.id for c in shard(list(reversed(cells)), 2, 3)) == sorted(c.id for c in parts[1])
