"""Sparse-gradient cases: the case format, the kernel's dense and lazy runs,
and the strategies (empty steps, all-rows steps, rows listed twice)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import find, settings

from conformance import strategies
from conformance.case import Case, CaseError
from conformance.kernel import run_case
from conformance.cells import Cell, Cross, Selection, enumerate_cells
from conformance.judging import retarget


def _sgd_case(**over):
    data = {
        "rule": "sgd",
        "dtype": "float64",
        "hyperparameters": {"lr": 0.5, "momentum": 0.9},
        "params": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        # step 1: rows 0 and 2; step 2: nothing; step 3: every row; step 4: row 1 twice
        "sparse_rows": [[0, 2], [], [2, 0, 1], [1, 1]],
        "sparse_values": [[[1.0, 1.0], [2.0, 2.0]], [], [[1.0, 0.0], [0.5, 0.5], [0.25, 0.5]], [[1.0, 2.0], [3.0, -1.0]]],
    }
    data.update(over)
    return Case.from_dict(data)


def test_sparse_values_give_the_summed_gradient_and_round_trip():
    case = _sgd_case()
    np.testing.assert_array_equal(case.grads[0], [[1, 1], [0, 0], [2, 2]])
    np.testing.assert_array_equal(case.grads[1], np.zeros((3, 2)))
    np.testing.assert_array_equal(case.grads[2], [[0.5, 0.5], [0.25, 0.5], [1, 0]])
    np.testing.assert_array_equal(case.grads[3], [[0, 0], [4, 1], [0, 0]])  # the two slices of row 1, summed
    # slice_sq: the squares of the parts, not of the sum, where a row repeats
    terms = case.slice_terms
    np.testing.assert_array_equal(terms.squares[3], [[0, 0], [10, 5], [0, 0]])
    np.testing.assert_array_equal(terms.squares[0], case.grads[0] ** 2)
    np.testing.assert_array_equal(terms.repeated_abs[3], [[0, 0], [4, 3], [0, 0]])  # row 1 only: |1|+|3|, |2|+|-1|
    np.testing.assert_array_equal(terms.smallest_squares[3][1], [1, 1])
    # slice_abs: |a| + |b| on the repeated row, |g| on a row listed once
    np.testing.assert_array_equal(terms.abs_sums[3], [[0, 0], [4, 3], [0, 0]])
    np.testing.assert_array_equal(terms.abs_sums[2], np.abs(case.grads[2]))
    again = Case.from_dict(json.loads(case.to_json()))
    assert again.sparse_rows == case.sparse_rows
    np.testing.assert_array_equal(again.grads, case.grads)
    assert all(np.array_equal(a, b) for a, b in zip(again.sparse_values, case.sparse_values))


def test_a_repeated_row_sums_in_float64_and_rounds_once_to_the_dtype():
    case = _sgd_case(dtype="float16", sparse_rows=[[0, 0]], sparse_values=[[[1.0, 1.0], [2.0**-11, 2.0**-11 * 3]]], params=[[0.0, 0.0]])
    # 1 + 2^-11 is a tie in float16 (to even: 1), 1 + 3*2^-11 rounds up
    np.testing.assert_array_equal(case.grads[0], [[1.0, 1.0 + 2.0**-9]])


@pytest.mark.parametrize(
    "over, path, message",
    [
        ({"sparse_values": None, "grads": [[[1, 1], [0, 0], [0, 0]]], "sparse_rows": [[0, 0]]}, "sparse_rows[0]", "listed twice"),
        ({"sparse_values": [[[1.0, 1.0]]], "sparse_rows": [[0, 2]]}, "sparse_values[0]", "one row per listed index"),
        ({"sparse_values": [[[1.0, 1.0]]], "sparse_rows": [[0]], "grads": [[[2, 1], [0, 0], [0, 0]]]}, "grads[0]", "sum of the step's sparse_values"),
        ({"sparse_rows": None}, "sparse_values", "need sparse_rows"),
        ({"sparse_rows": [[0, 3]], "sparse_values": [[[1.0, 1.0], [1.0, 1.0]]]}, "sparse_rows[0]", "outside"),
    ],
)
def test_malformed_sparse_cases_name_the_key_path(over, path, message):
    with pytest.raises(CaseError) as err:
        _sgd_case(**over)
    assert path in str(err.value) and message in str(err.value)


def test_kernel_dense_and_lazy_on_empty_all_and_repeated_rows(catalog):
    spec = catalog.get("sgd")
    case = _sgd_case()
    dense = run_case(spec, case, variants=())
    lazy = run_case(spec, case, variants=("lazy",))
    # step 1: untouched row 1 keeps everything either way (no history yet)
    np.testing.assert_array_equal(dense.params[0], lazy.params[0])
    # step 2 (empty): lazy leaves every row; dense keeps moving the momentum rows 0 and 2
    np.testing.assert_array_equal(lazy.params[1], lazy.params[0])
    assert not np.array_equal(dense.params[1], dense.params[0])
    np.testing.assert_array_equal(dense.state["b"][1], 0.9 * dense.state["b"][0])
    # step 3 (all rows): both update every row
    assert np.all(lazy.params[2] != lazy.params[1])
    # step 4: row 1 listed twice gets the sum of its slices, like a dense [4, 1]
    np.testing.assert_allclose(lazy.state["b"][3][1], 0.9 * lazy.state["b"][2][1] + np.array([4.0, 1.0]))
    np.testing.assert_array_equal(lazy.params[3][[0, 2]], lazy.params[2][[0, 2]])


def test_per_slice_square_differs_only_where_a_row_repeats(catalog):
    spec = catalog.get("adagrad")
    case = _sgd_case(rule="adagrad", hyperparameters={"lr": 0.5})
    canonical = run_case(spec, case, variants=())
    sliced = run_case(spec, case, variants=("per_slice_square",))
    np.testing.assert_array_equal(canonical.params[:3], sliced.params[:3])
    np.testing.assert_array_equal(sliced.state["s"][3][1] - sliced.state["s"][2][1], [10.0, 5.0])
    np.testing.assert_array_equal(canonical.state["s"][3][1] - canonical.state["s"][2][1], [16.0, 1.0])


def _sparse_strategy(catalog, fw="tensorflow", mode="eager", rule="sgd"):
    spec = catalog.get(rule)
    return strategies.cases(spec, spec.mode(fw, mode), device="cpu", dtype="float32", sparse=True)


@pytest.mark.parametrize(
    "what",
    [
        lambda c: any(len(r) == 0 for r in c.sparse_rows),
        lambda c: any(len(set(r)) == c.shape[0] and c.shape[0] > 1 for r in c.sparse_rows),
        lambda c: any(len(set(r)) != len(r) for r in c.sparse_rows),
    ],
    ids=["empty step", "all-rows step", "repeated row"],
)
def test_strategies_generate_empty_all_and_repeated_steps(catalog, what):
    found = find(_sparse_strategy(catalog), what, settings=settings(max_examples=500, database=None))
    assert found.params.ndim == 2 and found.sparse_rows is not None
    for i, rows in enumerate(found.sparse_rows):  # untouched rows have a zero gradient
        untouched = np.setdiff1d(np.arange(found.shape[0]), rows)
        assert not np.any(found.grads[i][untouched])


def test_no_repeated_rows_where_the_sparse_form_cannot_list_a_row_twice(catalog):
    spec = catalog.get("sgd")
    mode = spec.mode("mxnet", "updater")
    assert not mode.sparse.duplicates
    strat = strategies.cases(spec, mode, device="cpu", dtype="float32", sparse=True)
    with pytest.raises(Exception):  # hypothesis finds no such example
        find(strat, lambda c: any(len(set(r)) != len(r) for r in c.sparse_rows), settings=settings(max_examples=300, database=None))


def test_sparse_cells_and_their_oracle_are_enumerated(catalog):
    cells = enumerate_cells(catalog, Selection(rules=("adam",), frameworks=("torch", "jax"), devices=("cpu",)))
    ids = {c.id for c in cells}
    assert "adam[torch-sparse_adam-cpu-float16-sparse]" in ids  # sparse-only modes: every dtype
    assert "adam[torch-sparse_adam-cpu-float32]" not in ids  # and no dense cell
    assert "adam[jax-eager-cpu-float32-sparse]" in ids  # reported unsupported, with the reason
    assert "adam[jax-eager-cpu-float32-sparse~dense]" not in ids
    assert "adam[torch-forloop-cpu-float16-sparse]" not in ids  # other modes: float32 and float64
    sgd = enumerate_cells(catalog, Selection(rules=("sgd",), frameworks=("torch",), modes=("forloop",), devices=("cpu",)))
    assert {c.label("gradients") for c in sgd} == {"dense", "sparse", "sparse~dense"}
    oracle = next(c for c in sgd if c.is_cross)
    assert (oracle.gradients, oracle.cross) == ("sparse", Cross("gradients", "dense"))  # typed: the first side is sparse


def test_a_dense_fixed_case_does_not_enter_a_sparse_cell(catalog):
    case = Case.from_dict({"rule": "adam", "dtype": "float64", "params": [[1.0]], "grads": [[[0.5]]]})
    assert retarget(case, Cell("adam", "torch", "sparse_adam", "cpu", "float32", "sparse")) is None
    sparse = _sgd_case()
    dense_cell = retarget(sparse, Cell("sgd", "torch", "forloop", "cpu", "float32"))
    assert dense_cell.sparse_rows is None and dense_cell.sparse_values is None
    sparse_cell = retarget(sparse, Cell("sgd", "torch", "forloop", "cpu", "float32", "sparse"))
    assert sparse_cell.sparse_rows == sparse.sparse_rows and sparse_cell.dtype == "float32"


def test_an_oracle_case_keeps_its_gradient_kind():
    oracle = {"axis": "gradients", "other": "dense"}
    case = _sgd_case(gradients="sparse", cross=oracle, framework="torch", mode="forloop", device="cpu")
    again = Case.from_dict(json.loads(case.to_json()))
    assert (again.gradients, again.cross) == ("sparse", Cross("gradients", "dense"))
    with pytest.raises(CaseError, match="needs sparse_rows"):
        Case.from_dict({"rule": "sgd", "dtype": "float64", "params": [[1.0]], "grads": [[[1.0]]], "gradients": "sparse", "cross": oracle})
    with pytest.raises(CaseError, match="unknown gradient kind"):
        _sgd_case(gradients="ragged")
    with pytest.raises(CaseError, match=r"gradients.*sparse-vs-dense oracle only"):
        _sgd_case(gradients="dense", cross={"axis": "gradients", "other": "sparse"})
    with pytest.raises(CaseError, match="crosses mode, device or gradients"):
        _sgd_case(cross={"axis": "env", "other": "candidate"})


def test_a_case_file_of_the_older_form_reads_as_the_typed_one():
    """Case files written before cross cells were typed held both sides in one
    field ("sparse~dense", "forloop~foreach"); they replay as before."""
    old = _sgd_case(gradients="sparse~dense", framework="torch", mode="forloop", device="cpu")
    assert (old.gradients, old.cross) == ("sparse", Cross("gradients", "dense"))
    modes = _sgd_case(framework="torch", mode="forloop~foreach", device="cpu")
    assert (modes.mode, modes.cross) == ("forloop", Cross("mode", "foreach"))
    assert "~" not in modes.to_json()  # written in the typed form
    with pytest.raises(CaseError, match="in `cross` only"):
        _sgd_case(framework="torch", mode="forloop~foreach", device="cpu", cross={"axis": "mode", "other": "fused"})


def test_the_report_shows_the_sparse_table_escaped():
    from conformance.report import render

    row = {"rule": "sgd", "framework": "mxnet", "mode": "updater", "declared": "lazy", "measured": "unsupported",
           "cases": {}, "oracle": {"same": 0, "bit_identical": 0, "differs": 0, "diverges": 0},
           "empty_steps": 1, "all_rows_steps": 2, "duplicates": 0, "failing": 0, "reason": "<script>x</script>"}
    html = render({"totals": {}, "versions": {}, "environments": [], "cells": [], "sparse": [row]})
    assert "Sparse gradients" in html and "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x</script>" not in html


def _record(mode, semantics, outcome="known-divergence", expected=("lazy",), gradients="sparse", **extra):
    return {"cell": f"sgd[mxnet-{mode}-cpu-float32-{gradients}]", "rule": "sgd", "framework": "mxnet", "mode": mode,
            "device": "cpu", "dtype": "float32", "gradients": gradients, "outcome": outcome, "phase": "generate",
            "expected": list(expected), "sparse_semantics": semantics, "reason": "", **extra}


def test_list_sparse_shows_what_a_run_measured(tmp_path, capsys):
    from conformance.cli import main

    lines = [
        _record("updater", "lazy"), _record("updater", "either"),
        _record("updater", None, outcome="conforms", cross={"axis": "gradients", "other": "dense"}, sides_differ=True),
        _record("no_lazy_update", "dense", expected=()), _record("no_lazy_update", "lazy", outcome="diverges", expected=()),
    ]
    (tmp_path / "results-main.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert main(["list", "--sparse", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sgd       mxnet/updater          lazy (cases: either 1, lazy 1; sparse~dense: same 0 (bit-identical 0), differs 1" in out
    assert "mxnet/no_lazy_update   mixed [declared dense]" in out  # a lazy case where dense is declared
    assert "jax/eager              unsupported (declared; not run)" in out
    assert main(["list", "--sparse", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["measured"] for r in rows if r["framework"] == "mxnet" and r["rule"] == "sgd"} >= {"lazy", "mixed"}
