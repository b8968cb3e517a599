"""The regression gate's logic, on recorded results: a baseline of a run, the
same run again (passes), and runs where something changed (fails, naming
the cell and why; improvements and new cells are noted, not failed)."""

from __future__ import annotations

import copy
import json

import pytest

from conformance.cli import main
from conformance.gate import baseline, changelog, compare


def _summary(torch_version="2.13.0"):
    env = {"run": {"seed": 7}, "frameworks": {"torch": {"versions": {"torch": torch_version, "numpy": "2.4"}}}}
    base = {
        "adam[torch-forloop-cpu-float32]": {"outcome": "conforms", "matched_variants": {"canonical": 20}, "worst_errors": {"max_ulp_error": 2.0, "margin": 0.1}},
        "adam[torch-fused-cpu-float32]": {"outcome": "conforms", "matched_variants": {"canonical": 20}, "worst_errors": {"max_ulp_error": 3.0, "margin": 0.2}},
        "rmsprop[torch-forloop-cpu-float32]": {"outcome": "known-divergence", "matched_variants": {"canonical": 5, "eps_inside_sqrt": 15},
                                               "worst_errors": {"max_ulp_error": 4.0, "margin": 0.3}},
    }
    out = []
    for cid, c in base.items():
        rule, rest = cid.split("[")
        fw, mode = rest.split("-")[:2]
        out.append({"id": cid, "rule": rule, "framework": fw, "mode": mode, "device": "cpu", "dtype": "float32", "examples": 20, **c})
    return {"environments": [env], "cells": out,
            "defaults": [{"rule": "adam", "framework": "torch", "mode": "forloop", "hyperparameter": "eps", "framework_default": 1e-8}]}


def _cell(summary, cid):
    return next(c for c in summary["cells"] if c["id"] == cid)


def test_nothing_changed_passes():
    s = _summary()
    result = compare(baseline(s), baseline(copy.deepcopy(s)))
    assert result["passed"] and result["entries"] == []
    assert "gate: passed" in changelog(result)


def test_a_changed_variant_fails_and_names_the_cell():
    s, t = _summary(), _summary(torch_version="2.14.0")
    _cell(t, "rmsprop[torch-forloop-cpu-float32]").update(outcome="conforms", matched_variants={"canonical": 20})
    result = compare(baseline(s), baseline(t))
    assert not result["passed"]
    [e] = [e for e in result["entries"] if e["fails"]]
    assert (e["kind"], e["cell"], e["before"], e["after"]) == ("semantics", "rmsprop[torch-forloop-cpu-float32]", "eps_inside_sqrt", "canonical")
    assert result["versions"] == {"torch": {"before": "torch=2.13.0", "after": "torch=2.14.0"}}
    assert "FAIL semantics" in changelog(result)


@pytest.mark.parametrize("after, kind", [("diverges", "worse"), ("crash", "worse"), ("unsupported", "worse")])
def test_a_worse_outcome_fails(after, kind):
    s, t = _summary(), _summary()
    _cell(t, "adam[torch-fused-cpu-float32]")["outcome"] = after
    result = compare(baseline(s), baseline(t))
    assert not result["passed"]
    assert [(e["kind"], e["cell"]) for e in result["entries"] if e["fails"]] == [(kind, "adam[torch-fused-cpu-float32]")]
    if after == "crash":
        assert result["entries"][0]["why"] == "a new crash"


def test_a_lost_cell_and_a_changed_default_fail():
    s, t = _summary(), _summary()
    t["cells"] = [c for c in t["cells"] if c["id"] != "adam[torch-fused-cpu-float32]"]
    t["defaults"][0]["framework_default"] = 1e-7
    result = compare(baseline(s), baseline(t))
    kinds = sorted((e["kind"], e["cell"]) for e in result["entries"] if e["fails"])
    assert kinds == [("default", "adam/torch/forloop/eps"), ("disappeared", "adam[torch-fused-cpu-float32]")]


def test_improvements_new_cells_and_numerics_are_noted_not_failed():
    s, t = _summary(), _summary()
    _cell(s, "adam[torch-fused-cpu-float32]")["outcome"] = "diverges"
    _cell(t, "adam[torch-forloop-cpu-float32]")["worst_errors"] = {"max_ulp_error": 40.0, "margin": 0.5}
    t["cells"].append({**_cell(t, "adam[torch-forloop-cpu-float32]"), "id": "adam[torch-forloop-cpu-float64]", "dtype": "float64"})
    result = compare(baseline(s), baseline(t))
    assert result["passed"]
    assert sorted(e["kind"] for e in result["entries"]) == ["better", "new", "numerics"]


def test_gate_command_exit_status_and_report(tmp_path, capsys):
    """`conformance baseline` then `conformance gate` on recorded results directories."""
    def results(directory, version, outcome):
        directory.mkdir()
        env = {"run": {"seed": 7}, "host": {}, "time": "t", "frameworks": {"torch": {"available": True, "versions": {"torch": version}, "devices": {}}}}
        (directory / "environment-main.json").write_text(json.dumps(env))
        r = {"cell": "adam[torch-forloop-cpu-float32]", "rule": "adam", "framework": "torch", "mode": "forloop", "device": "cpu",
             "dtype": "float32", "gradients": "dense", "outcome": outcome, "phase": "generate", "reason": "",
             "matched_variant": "canonical" if outcome == "conforms" else None}
        (directory / "results-main.jsonl").write_text(json.dumps(r) + "\n")

    results(tmp_path / "before", "2.13.0", "conforms")
    results(tmp_path / "same", "2.13.0", "conforms")
    results(tmp_path / "after", "2.14.0", "diverges")
    base = tmp_path / "baseline.json"
    assert main(["baseline", str(tmp_path / "before"), "-o", str(base)]) == 0
    assert main(["gate", "--baseline", str(base), str(tmp_path / "same")]) == 0
    assert main(["gate", "--baseline", str(base), str(tmp_path / "after")]) == 1
    out = capsys.readouterr().out
    assert "torch: torch=2.13.0 -> torch=2.14.0" in out
    assert "FAIL worse       adam[torch-forloop-cpu-float32]: conforms -> diverges" in out
    html = (tmp_path / "after" / "index.html").read_text(encoding="utf-8")
    assert "Regression gate: FAILED" in html and json.loads((tmp_path / "after" / "gate.json").read_text())["passed"] is False


def test_cells_outside_the_runs_selection_are_not_lost():
    s, t = _summary(), _summary()
    t["cells"] = [c for c in t["cells"] if c["rule"] == "adam"]
    t["environments"][0]["run"]["selection"] = {"rules": ["adam"], "frameworks": None}
    result = compare(baseline(s), baseline(t))
    assert result["passed"] and result["not_selected"] == 1
    # the same cell lost from a run that selected it fails
    t["environments"][0]["run"]["selection"] = {"rules": ["adam", "rmsprop"]}
    assert not compare(baseline(s), baseline(t))["passed"]


def test_a_framework_filter_gates_a_subset_run_against_a_full_baseline():
    s = _summary()
    s["cells"].append({"id": "adam[jax-jit-cpu-float32]", "rule": "adam", "framework": "jax", "mode": "jit", "device": "cpu",
                       "dtype": "float32", "examples": 20, "outcome": "conforms", "matched_variants": {"canonical": 20}})
    t = copy.deepcopy(s)
    t["cells"] = [c for c in t["cells"] if c["framework"] == "torch"]
    assert not compare(baseline(s), baseline(t))["passed"]  # the jax cell disappeared
    assert compare(baseline(s), baseline(t), frameworks=["torch"])["passed"]


ENV_PAIR = {"axis": "env", "other": "candidate"}


def _older_form(record: dict) -> dict:
    """A baseline of the form written before cross cells were typed: both sides in one field."""
    out = copy.deepcopy(record)
    for c in out["cells"].values():
        cross = c.pop("cross", None)
        if cross:
            own = c[cross["axis"]] or "pinned"
            c[cross["axis"]] = f"{own}~{cross['other']}"
    return out


def test_a_baseline_of_the_older_form_gates_a_typed_run_unchanged():
    """Baselines recorded before cross cells were typed (the committed one
    included) hold "forloop~fused" or "sparse~dense" inside a field; they are
    read as the typed cells they mean: nothing disappears or changes, and a
    cross cell the run did not select is not counted as disappeared."""
    s = _summary()
    common = {"rule": "adam", "framework": "torch", "mode": "forloop", "device": "cpu", "dtype": "float32", "examples": 20,
              "outcome": "conforms", "matched_variants": {}, "worst_errors": {"max_ulp_error": 2.0}}
    s["cells"].append(dict(common, id="adam[torch-forloop-cpu-float32-sparse~dense]", gradients="sparse",
                           cross={"axis": "gradients", "other": "dense"}))
    s["cells"].append(dict(common, id="adam[torch-forloop~fused-cpu-float32]", cross={"axis": "mode", "other": "fused"}))
    typed = baseline(s)
    old = _older_form(typed)
    assert old["cells"]["adam[torch-forloop-cpu-float32-sparse~dense]"]["gradients"] == "sparse~dense"
    assert old["cells"]["adam[torch-forloop~fused-cpu-float32]"]["mode"] == "forloop~fused"
    result = compare(old, typed)
    assert result["passed"] and result["entries"] == [], result["entries"]
    dense_only = copy.deepcopy(typed)
    del dense_only["cells"]["adam[torch-forloop-cpu-float32-sparse~dense]"]
    dense_only["selections"] = [{"rules": None, "frameworks": ["torch"], "gradients": ["dense"]}]
    result = compare(old, dense_only)
    assert result["passed"] and result["not_selected"] == 1, result["entries"]


def _side_by_side(candidate_variants=None, pair_outcome="conforms", identical=20):
    """A side-by-side run's summary: pinned cells, the candidate's, and the two compared."""
    s = _summary()
    s["environments"][0]["frameworks"]["torch@candidate"] = {"versions": {"torch": "2.14.0"}, "env": "candidate"}
    extra = []
    for c in s["cells"]:
        cand = dict(c, id=c["id"][:-1] + "@candidate]", env="candidate")
        if candidate_variants and c["id"] in candidate_variants:
            cand.update(candidate_variants[c["id"]])
        pair = dict(c, id=c["id"][:-1] + "@pinned~candidate]", env="", cross=ENV_PAIR, outcome=pair_outcome,
                    matched_variants={}, bit_identical=identical)
        extra += [cand, pair]
    s["cells"] += extra
    s["defaults"].append(dict(s["defaults"][0], framework="torch@candidate"))
    return s


def test_side_by_side_without_a_baseline_gates_the_candidate_against_the_pinned_cells():
    result = compare(None, baseline(_side_by_side()))
    assert result["passed"] and result["entries"] == []
    assert result["versions"] == {"torch": {"before": "torch=2.13.0", "after": "torch=2.14.0"}}
    assert result["side_by_side"]["bit_identical"] == 3 and result["side_by_side"]["changed"] == 0
    assert "3 bit-identical on every case" in changelog(result)

    changed = _side_by_side({"rmsprop[torch-forloop-cpu-float32]": {"outcome": "conforms", "matched_variants": {"canonical": 20}}},
                            pair_outcome="diverges", identical=0)
    result = compare(None, baseline(changed))
    assert not result["passed"]
    kinds = {(e["kind"], e["cell"]) for e in result["entries"] if e["fails"]}
    assert ("semantics", "rmsprop[torch-forloop-cpu-float32]") in kinds
    assert ("changed", "rmsprop[torch-forloop-cpu-float32@pinned~candidate]") in kinds
    assert result["side_by_side"]["changed"] == 3


def test_a_plain_run_needs_a_baseline():
    with pytest.raises(ValueError, match="no baseline"):
        compare(None, baseline(_summary()))


def test_a_real_side_by_side_run_of_one_version_twice_is_bit_identical_and_passes(tmp_path, capsys):
    """The same torch in two worker interpreters (pinned and candidate): every
    case of the compared cells is bit-identical, and the gate passes with no
    baseline file, judging the candidate against the pinned cells."""
    import sys

    pytest.importorskip("torch")
    out = tmp_path / "run"
    code = main(["run", "--rules", "sgd,adam", "--frameworks", "torch", "--modes", "forloop,fused", "--dtypes", "float32",
                 "--devices", "cpu", "--gradients", "dense", "--examples", "3", "--seed", "11", "--jobs", "1", "--no-progress",
                 "--candidate", f"torch={sys.executable}", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    ids = {c["id"]: c for c in summary["cells"]}
    pair = ids["adam[torch-forloop-cpu-float32@pinned~candidate]"]
    assert pair["outcome"] == "conforms" and pair["examples"] >= 3 and pair["bit_identical"] == pair["examples"]
    assert ids["adam[torch-forloop-cpu-float32@candidate]"]["outcome"] == ids["adam[torch-forloop-cpu-float32]"]["outcome"]
    assert "adam[torch-forloop~fused-cpu-float32@candidate]" in ids  # the candidate's own cross-oracles
    assert "torch@candidate" in summary["versions"]
    capsys.readouterr()
    assert main(["gate", str(out)]) == 0
    text = capsys.readouterr().out
    assert "side by side: 4 cell(s) compared on identical cases: 4 bit-identical on every case" in text
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "pinned~candidate" in html and "Side by side: 4 cell(s)" in html


def test_the_sparse_dense_oracles_error_is_not_a_numerics_note():
    s = _summary()
    s["cells"].append({"id": "adam[torch-forloop-cpu-float32-sparse~dense]", "rule": "adam", "framework": "torch", "mode": "forloop",
                       "device": "cpu", "dtype": "float32", "gradients": "sparse", "cross": {"axis": "gradients", "other": "dense"},
                       "examples": 20, "outcome": "conforms",
                       "matched_variants": {}, "worst_errors": {"max_ulp_error": 2.0}})
    t = copy.deepcopy(s)
    _cell(t, "adam[torch-forloop-cpu-float32-sparse~dense]")["worst_errors"] = {"max_ulp_error": 1.6e8}
    _cell(t, "adam[torch-forloop-cpu-float32]")["worst_errors"] = {"max_ulp_error": 9.0}
    result = compare(baseline(s), baseline(t))
    assert [(e["kind"], e["cell"]) for e in result["entries"]] == [("numerics", "adam[torch-forloop-cpu-float32]")]


def test_recorded_tensorflow_upgrade_fails_on_sparse_cells_and_passes_on_dense_ones(tmp_path, capsys):
    """Recorded results of a real side-by-side run (tests/data/upgrade-tensorflow-adagrad:
    the adagrad eager float32 cells of `tox -e upgrade-tensorflow`, tensorflow-cpu 2.15.1 /
    Keras 2.15.0 pinned, 2.21.0 / Keras 3.15.1 candidate; shrink records and cases left out)."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "upgrade-tensorflow-adagrad"
    run = tmp_path / "all"
    run.mkdir()
    for name in ("results-main.jsonl", "environment-main.json"):
        (run / name).write_text((data / name).read_text())
    assert main(["gate", str(run)]) == 1
    out = capsys.readouterr().out
    assert "tensorflow: tensorflow=2.15.1,keras=2.15.0 -> tensorflow=2.21.0,keras=3.15.1" in out
    assert "FAIL changed     adagrad[tensorflow-eager-cpu-float32-sparse@pinned~candidate]" in out
    assert "FAIL semantics   adagrad[tensorflow-eager-cpu-float32-sparse]: eps_inside_sqrt -> " in out
    assert "per_slice_square" in out
    # the dense cells alone: nothing changed, the gate passes
    dense = tmp_path / "dense"
    dense.mkdir()
    lines = [line for line in (data / "results-main.jsonl").read_text().splitlines() if json.loads(line)["gradients"] == "dense"]
    (dense / "results-main.jsonl").write_text("\n".join(lines) + "\n")
    (dense / "environment-main.json").write_text((data / "environment-main.json").read_text())
    assert main(["gate", str(dense)]) == 0
    out = capsys.readouterr().out
    assert "side by side: 1 cell(s) compared on identical cases: 1 bit-identical on every case" in out
    assert "gate: passed" in out


@pytest.mark.parametrize("pinned, fails", [("0.2.3", True), ("0.2.4", False)])
def test_recorded_optax_upgrades_fail_exactly_where_adabelief_changed(tmp_path, capsys, pinned, fails):
    """Recorded results of two real side-by-side runs (tests/data/upgrade-optax-*-adabelief:
    the adabelief cells of `conformance run --frameworks jax --dtypes float32 --devices cpu`,
    seed 20261121, jax 0.4.38 with optax 0.2.3 or 0.2.4 pinned, jax 0.10.2 / optax 0.2.8
    candidate; shrink records and cases left out). optax 0.2.4 moved AdaBelief's prediction
    error from the previous first moment to the current one: the older pair fails naming the
    rule, the newer passes (the whole 0.2.4 run, thirteen rules, passed the gate too)."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / f"upgrade-optax-{pinned}-adabelief"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("results-main.jsonl", "environment-main.json"):
        (run / name).write_text((data / name).read_text())
    assert main(["gate", str(run)]) == (1 if fails else 0)
    out = capsys.readouterr().out
    assert f"optax={pinned} -> jax=0.10.2,jaxlib=0.10.2,optax=0.2.8" in out
    if fails:
        assert "FAIL semantics   adabelief[jax-eager-cpu-float32]: prediction_error_previous_m -> canonical" in out
        assert "FAIL changed     adabelief[jax-jit-cpu-float32@pinned~candidate]" in out
    else:
        assert "FAIL" not in out and "0 changed beyond it" in out and "gate: passed" in out


def test_a_side_that_crashed_is_compared_by_outcome_only():
    """Issue 17: a pinned side whose cells crashed (a dtype the old version
    lacks) produced no values; the gate once failed it on 'semantics changed'."""
    s, t = _summary(), _summary()
    _cell(s, "rmsprop[torch-forloop-cpu-float32]").update(outcome="crash", matched_variants={})
    result = compare(baseline(s), baseline(t))
    assert result["passed"]
    [e] = result["entries"]
    assert (e["kind"], e["before"], e["after"]) == ("better", "crash", "known-divergence")


def test_a_known_issue_that_stops_reproducing_is_fixed_in_the_new_version():
    s, t = _summary(), _summary(torch_version="2.14.0")
    _cell(s, "adam[torch-fused-cpu-float32]")["known_issues"] = {"fused SGD leaves float16 blocks unchanged": 3}
    result = compare(baseline(s), baseline(t))
    assert result["passed"]
    [e] = [e for e in result["entries"] if e["kind"] == "fixed"]
    assert e["cell"] == "adam[torch-fused-cpu-float32]" and "fixed in torch=2.14.0" in e["why"] and not e["fails"]
    assert changelog(result).splitlines()[1].startswith("note fixed")


def test_side_by_side_a_fixed_known_issue_names_the_candidate_s_version():
    """A side-by-side run (mxnet 1.5.1 pinned, 1.9.1 candidate, measured) once
    said "fixed in mxnet=1.5.1": the candidate's cells took the pinned version."""
    s = _summary()
    s["environments"][0]["frameworks"]["torch@candidate"] = {"versions": {"torch": "2.14.1", "numpy": "2.4"}}
    pinned = _cell(s, "adam[torch-fused-cpu-float32]")
    pinned["known_issues"] = {"fused SGD leaves float16 blocks unchanged": 3}
    s["cells"].append(dict(pinned, id="adam[torch-fused-cpu-float32@candidate]", env="candidate", known_issues={}))
    record = baseline(s)
    assert record["cells"]["adam[torch-fused-cpu-float32@candidate]"]["version"] == "torch=2.14.1"
    assert record["cells"]["adam[torch-fused-cpu-float32]"]["version"] == "torch=2.13.0"
    [e] = [e for e in compare(None, record)["entries"] if e["kind"] == "fixed"]
    assert "fixed in torch=2.14.1" in e["why"]


def test_side_by_side_a_flipped_variant_on_the_same_values_is_noted_not_failed():
    """Measured on mxnet 1.5.1 -> 1.9.1: a float16 Adam cell's cases matched
    canonical on one side and epsilon_hat on the other, while the direct
    comparison on identical cases (pinned~candidate) found the same values
    within the tolerance; the gate failed it as 'semantics changed'. Where the
    pair differs beyond the tolerance, the semantics change still fails."""
    s = _summary()
    s["environments"][0]["frameworks"]["torch@candidate"] = {"versions": {"torch": "2.14.1", "numpy": "2.4"}}
    for cid, pair_outcome in (("adam[torch-forloop-cpu-float32]", "conforms"), ("rmsprop[torch-forloop-cpu-float32]", "diverges")):
        pinned = _cell(s, cid)
        s["cells"].append(dict(pinned, id=cid[:-1] + "@candidate]", env="candidate", outcome="known-divergence", matched_variants={"epsilon_hat": 20}))
        s["cells"].append(dict(pinned, id=cid[:-1] + "@pinned~candidate]", env="", cross=ENV_PAIR, outcome=pair_outcome, matched_variants={}))
    result = compare(None, baseline(s))
    by = {(e["kind"], e["cell"]): e for e in result["entries"]}
    noted = by[("semantics", "adam[torch-forloop-cpu-float32]")]
    assert not noted["fails"] and "same values within the tolerance" in noted["why"]
    assert by[("semantics", "rmsprop[torch-forloop-cpu-float32]")]["fails"]
    assert by[("changed", "rmsprop[torch-forloop-cpu-float32@pinned~candidate]")]["fails"]


def test_a_baseline_drawn_by_another_scheme_compares_outcomes_only():
    """This tool changed how it draws cases from a seed (strategies.DRAW_SCHEME):
    the same seed gives other cases, whose variants and precision findings say
    nothing about a change. Seen for real: the baseline recorded before tensors
    were drawn as a kind and a seed failed 'semantics changed' on dozens of cells
    of an unchanged install. Outcomes and defaults are still compared."""
    s, t = _summary(), _summary()
    s["environments"][0]["run"]["draw"] = 1
    t["environments"][0]["run"]["draw"] = 2
    _cell(t, "rmsprop[torch-forloop-cpu-float32]").update(outcome="conforms", matched_variants={"canonical": 20})
    _cell(t, "adam[torch-fused-cpu-float32]")["worst_errors"] = {"max_ulp_error": 300.0, "margin": 0.2}
    result = compare(baseline(s), baseline(t))
    assert result["passed"] and result["draw"] == {"baseline": [1], "run": [2], "differ": True}
    assert not [e for e in result["entries"] if e["kind"] in ("semantics", "numerics", "precision")]
    assert "re-record the baseline" in changelog(result)
    _cell(t, "adam[torch-fused-cpu-float32]")["outcome"] = "diverges"
    result = compare(baseline(s), baseline(t))
    assert not result["passed"] and [e["kind"] for e in result["entries"] if e["fails"]] == ["worse"]
    # the same scheme (or one side not recorded, as in baselines before it was) compares everything
    t["environments"][0]["run"]["draw"] = 1
    assert not compare(baseline(s), baseline(t))["draw"]["differ"]
    del s["environments"][0]["run"]["draw"]
    assert compare(baseline(s), baseline(t))["draw"] == {"baseline": [], "run": [1], "differ": False}


def test_a_run_records_its_draw_scheme():
    from conformance.session import Options
    from conformance.strategies import DRAW_SCHEME

    # (what a run writes into its environment, and the baseline and the gate read back)
    assert Options().to_json()["draw"] == DRAW_SCHEME
