"""Cells and cross cells as typed data (issue 19): ids are derived, never parsed back."""

from __future__ import annotations

import pytest

from conformance.cells import CANDIDATE, Cell, Cross, Selection, enumerate_cells, migrate_legacy_cross

CASES = [
    # (cell, its id, its two sides' ids, the names of the sides)
    (Cell("adam", "tensorflow", "eager", "cpu", "float32", cross=Cross("mode", "xla")),
     "adam[tensorflow-eager~xla-cpu-float32]", ("adam[tensorflow-eager-cpu-float32]", "adam[tensorflow-xla-cpu-float32]"), ("eager", "xla")),
    (Cell("adam", "torch", "fused", "cpu", "float16", cross=Cross("device", "cuda")),
     "adam[torch-fused-cpu~cuda-float16]", ("adam[torch-fused-cpu-float16]", "adam[torch-fused-cuda-float16]"), ("cpu", "cuda")),
    (Cell("sgd", "mxnet", "updater", "cpu", "float64", "sparse", cross=Cross("gradients", "dense")),
     "sgd[mxnet-updater-cpu-float64-sparse~dense]", ("sgd[mxnet-updater-cpu-float64-sparse]", "sgd[mxnet-updater-cpu-float64]"), ("sparse", "dense")),
    (Cell("rmsprop", "torch", "forloop", "cpu", "float32", cross=Cross("env", CANDIDATE)),
     "rmsprop[torch-forloop-cpu-float32@pinned~candidate]", ("rmsprop[torch-forloop-cpu-float32]", "rmsprop[torch-forloop-cpu-float32@candidate]"),
     ("pinned", "candidate")),
]


@pytest.mark.parametrize("cell,cid,sides,names", CASES, ids=[c[1] for c in CASES])
def test_a_cross_cells_id_and_sides_come_from_its_fields(cell, cid, sides, names):
    assert cell.id == cid and cell.is_cross
    assert tuple(side.id for side in cell.sides()) == sides
    assert cell.side_names() == names and cell.first == cell.sides()[0]
    assert all(not side.is_cross for side in cell.sides())
    # stored as fields, read back as the same cell; the older form ("a~b" in one field) migrates to it
    assert Cell.from_json(cell.to_json()) == cell
    old = {k: v for k, v in cell.to_json().items() if k != "cross"}
    old[cell.cross.axis] = "~".join(names)
    assert Cell.from_json(old) == cell


def test_a_plain_cell_has_no_sides_and_an_unknown_axis_is_refused():
    cell = Cell("adam", "torch", "forloop", "cpu", "float32")
    assert not cell.is_cross and cell.first is cell and cell.label("mode") == "forloop"
    with pytest.raises(ValueError, match="not a cross cell"):
        cell.sides()
    with pytest.raises(ValueError, match="compares on one of"):
        Cross("dtype", "float64")
    assert migrate_legacy_cross({"mode": "forloop", "device": "cpu"}) == ({"mode": "forloop", "device": "cpu"}, None)


def test_a_selection_names_cells_as_their_ids_show_them(catalog):
    cells = enumerate_cells(catalog, Selection(rules=("adam",), frameworks=("torch",), devices=("cpu~cuda", "cuda")))
    assert cells and all(c.device == "cuda" or c.crosses("device") for c in cells)
    assert any(c.crosses("device") for c in cells)
    oracle = enumerate_cells(catalog, Selection(rules=("sgd",), frameworks=("torch",), modes=("forloop",), devices=("cpu",),
                                                dtypes=("float32",), gradients=("sparse~dense",)))
    assert [c.id for c in oracle] == ["sgd[torch-forloop-cpu-float32-sparse~dense]"]
    assert oracle[0].gradients == "sparse" and oracle[0].cross == Cross("gradients", "dense")
