"""The report's data, without a browser: merged result directories keep
framework versions apart, the evidence of a case (per-step errors against
the bound, one element's trajectory) says where it diverged, and the page
carries every cell's drill-down as escaped JSON."""

from __future__ import annotations

import json
import re

import numpy as np

from conformance.case import Case
from conformance.compare import classify
from conformance.evidence import case_evidence
from conformance.kernel import run_case
from conformance.report import render
from conformance.summary import summarize
from conformance.cells import Cell
from conformance.records import Record
from conformance.tolerance import Trajectory

ADAM = {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "maximize": False}


def _record(catalog, observed_params: np.ndarray, case: Case, cell: Cell) -> dict:
    spec = catalog.get(case.rule)
    observed = Trajectory(observed_params, {})
    verdict = classify(spec, case, (), observed)
    return Record(cell=cell, outcome=verdict.outcome, reason=verdict.explanation, verdict=verdict, case=case, observed=observed).to_json(with_case=True)


def _case() -> Case:
    return Case.from_dict({"rule": "adam", "framework": "torch", "mode": "forloop", "device": "cpu", "dtype": "float32",
                           "hyperparameters": ADAM, "params": [0.5, -1.0, 2.0],
                           "grads": [[0.1, -0.2, 0.3], [0.2, 0.1, -0.1], [-0.3, 0.2, 0.1]]})


def test_evidence_points_at_the_first_divergence(catalog):
    case = _case()
    exact = run_case(catalog.get("adam"), case).params.astype(np.float32).astype(np.float64)
    wrong = exact.copy()
    wrong[1:, 2] += 1e-3  # element 2 leaves the rule at step 2
    record = _record(catalog, wrong, case, Cell("adam", "torch", "forloop", "cpu", "float32"))
    assert record["outcome"] == "diverges"
    ev = case_evidence(catalog.get("adam"), record)
    steps = ev["steps"]["canonical"]
    assert steps["ratio"][0] <= 1 < steps["ratio"][1]  # within the bound at step 1, beyond it at step 2
    assert steps["where"][1] == "p[2]" and steps["error"][1] > steps["bound"][1]
    t = ev["trajectory"]
    assert (t["slot"], t["element"], t["start"]) == ("p", [2], 0)
    assert t["framework"][0] == 2.0 and len(t["framework"]) == 4  # the step-0 value, then three steps
    assert abs(t["framework"][2] - t["references"]["canonical"][2]) > 9e-4


def test_conforming_evidence_stays_within_the_bound(catalog):
    case = _case()
    exact = run_case(catalog.get("adam"), case).params.astype(np.float32).astype(np.float64)
    record = _record(catalog, exact, case, Cell("adam", "torch", "forloop", "cpu", "float32"))
    assert record["outcome"] == "conforms"
    ev = case_evidence(catalog.get("adam"), record)
    assert all(r is None or r <= 1 for r in ev["steps"]["canonical"]["ratio"])
    assert len(ev["steps"]["canonical"]["max_ulp"]) == 3


def _results(directory, versions: dict, records: list[dict]) -> None:
    directory.mkdir(parents=True)
    env = {"run": {}, "host": {}, "time": "t", "frameworks": {"torch": {"available": True, "versions": versions, "devices": {}}}}
    (directory / "environment-main.json").write_text(json.dumps(env))
    (directory / "results-main.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def _plain(outcome="conforms"):
    return {"cell": "adam[torch-forloop-cpu-float32]", "rule": "adam", "framework": "torch", "mode": "forloop", "device": "cpu",
            "dtype": "float32", "gradients": "dense", "outcome": outcome, "phase": "generate", "reason": ""}


def test_merging_two_versions_keeps_them_apart(tmp_path):
    _results(tmp_path / "a", {"torch": "2.12.0"}, [_plain()])
    _results(tmp_path / "b", {"torch": "2.13.0"}, [_plain("diverges")])
    s = summarize([tmp_path / "a", tmp_path / "b"])
    ids = sorted(c["id"] for c in s["cells"])
    assert ids == ["adam[torch-forloop-cpu-float32]@torch=2.12.0", "adam[torch-forloop-cpu-float32]@torch=2.13.0"]
    assert {c["version"]: c["outcome"] for c in s["cells"]} == {"torch=2.12.0": "conforms", "torch=2.13.0": "diverges"}
    html = render(s)
    assert "torch @ torch=2.12.0" in html and "torch @ torch=2.13.0" in html


def test_merging_shards_of_one_version_merges_cells(tmp_path):
    _results(tmp_path / "a", {"torch": "2.13.0"}, [_plain()])
    _results(tmp_path / "b", {"torch": "2.13.0"}, [_plain(), _plain("diverges")])
    s = summarize([tmp_path / "a", tmp_path / "b"])
    assert [(c["id"], c["examples"], c["outcome"]) for c in s["cells"]] == [("adam[torch-forloop-cpu-float32]", 3, "diverges")]


def test_every_cell_has_its_drill_down_data(catalog, tmp_path):
    case = _case()
    exact = run_case(catalog.get("adam"), case).params.astype(np.float32).astype(np.float64)
    record = _record(catalog, exact, case, Cell("adam", "torch", "forloop", "cpu", "float32"))
    record["reason"] = "</script><b>bold</b>"
    _results(tmp_path / "r", {"torch": "2.13.0"}, [record, {**_plain(), "cell": "sgd[torch-forloop-cpu-float32]", "rule": "sgd"}])
    s = summarize([tmp_path / "r"])
    html = render(s, catalog)
    assert "</script><b>" not in html
    blocks = re.findall(r'<script type="application/json" id="cell-(\d+)">(.*?)</script>', html, re.S)
    assert [n for n, _ in blocks] == ["0", "1"]
    detail = json.loads(blocks[0][1])
    assert detail["id"] == "adam[torch-forloop-cpu-float32]"
    view = detail["cases"][0]
    assert view["reason"] == "</script><b>bold</b>"
    # what repeats across cells is stored once and referred to by index
    shared = json.loads(re.search(r'<script type="application/json" id="shared">(.*?)</script>', html, re.S).group(1))
    script = "\n\n".join(shared[i] for i in view["script"])
    assert "evidence" in view and "import torch" in script and view["case"]["rule"] == "adam"
    assert shared[detail["declaration"]]["modes"][0]["optimizer"] == "torch.optim.Adam"


def test_what_repeats_across_cells_is_stored_once(catalog):
    from conformance.report import interned

    declaration = {"modes": [{"optimizer": "torch.optim.Adam"}]}
    details = [{"declaration": dict(declaration), "cases": [{"script": f"import torch\n\nparams = {k}\n\nrun()"}]} for k in range(3)]
    out, table = interned(details)
    assert len({d["declaration"] for d in out}) == 1 and table[out[0]["declaration"]] == declaration
    assert ["\n\n".join(table[i] for i in d["cases"][0]["script"]) for d in out] == [f"import torch\n\nparams = {k}\n\nrun()" for k in range(3)]
    assert len(table) == 1 + 2 + 3  # the declaration, the two shared paragraphs, one per case


def test_a_case_that_shows_the_declared_variant_is_kept(catalog, tmp_path):
    """A known-divergence cell's first case that tells the variant from the
    canonical rule keeps its data (the worst case may be one that does not)."""
    from conformance.results import ResultWriter

    spec = catalog.get("adam")
    case = Case.from_dict({"rule": "adam", "framework": "tensorflow", "mode": "eager", "device": "cpu", "dtype": "float64",
                           "hyperparameters": dict(ADAM, eps=0.05), "params": [0.5, -1.0], "grads": [[0.01, -0.02], [0.03, 0.0]]})
    observed = Trajectory(run_case(spec, case, variants=("epsilon_hat",)).params.astype(np.float64), {})
    cell = Cell("adam", "tensorflow", "eager", "cpu", "float64")
    writer = ResultWriter(tmp_path, "main")
    for _ in range(3):
        verdict = classify(spec, case, ("epsilon_hat",), observed)
        assert verdict.outcome == "known-divergence"
        writer.write(Record(cell=cell, outcome=verdict.outcome, reason=verdict.explanation, verdict=verdict, case=case, observed=observed, kind="generated"))
    writer.close()
    lines = [json.loads(x) for x in (tmp_path / "results-main.jsonl").read_text().splitlines()]
    assert [x.get("shows_variant", False) for x in lines] == [True, False, False]  # (its parameters show it: no later one is kept)
    s = summarize([tmp_path])
    assert s["cells"][0]["showcase"]["shows_variant"]


def test_pytest_plugin_writes_the_report_when_asked(tmp_path):
    """`pytest specs/ --conformance-out DIR` writes results, summary.json and index.html."""
    import importlib.util
    import subprocess
    import sys

    import pytest

    from conformance.catalog import builtin_spec_dir

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(builtin_spec_dir() / "adam.yaml"),
           "--frameworks", "torch", "--modes", "forloop", "--dtypes", "float32", "--devices", "cpu", "--gradients", "dense",
           "--examples", "2", "--conformance-out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "adam[torch-forloop-cpu-float32]" in html and "Plotly" in html
    assert json.loads((out / "summary.json").read_text())["cells"][0]["id"] == "adam[torch-forloop-cpu-float32]"


def test_defaults_of_an_optimizer_that_could_not_be_asked_do_not_break_the_tables():
    from conformance.report import rule_tables

    rows = [
        {"rule": "adam", "framework": "tensorflow", "mode": "legacy", "optimizer": "keras.optimizers.legacy.Adam",
         "error": "`keras.optimizers.legacy` is not supported in Keras 3"},
        {"rule": "adam", "framework": "torch", "mode": "forloop", "optimizer": "torch.optim.Adam", "hyperparameter": "eps",
         "canonical_default": 1e-8, "framework_default": 1e-8, "argument": "eps", "differs": False},
    ]
    [table] = rule_tables({"defaults": rows})
    assert [c["key"] for c in table["default_columns"]] == ["torch/forloop"]
    assert [d["hyperparameter"] for d in table["defaults"]] == ["eps"]


def test_pytest_xdist_keeps_a_family_in_one_worker(tmp_path):
    """Under `pytest -n 2` a family's cells (a rule on one framework in one
    dtype: cells.family) run in one worker, as a `conformance run --jobs`
    shard keeps them, so that they share their framework runs and references."""
    import importlib.util
    import subprocess
    import sys

    import pytest

    from conformance.catalog import builtin_spec_dir

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("xdist") is None:
        pytest.skip("torch or pytest-xdist is not installed")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", str(builtin_spec_dir() / "sgd.yaml"),
           str(builtin_spec_dir() / "adagrad.yaml"), "--frameworks", "torch", "--dtypes", "float32,float64", "--devices", "cpu",
           "--gradients", "dense", "--examples", "2", "--conformance-out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    workers: dict[tuple, set[str]] = {}
    for f in out.glob("results-gw*.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            workers.setdefault((r["rule"], r["framework"], r["dtype"]), set()).add(f.name)
    assert len(workers) == 4, workers  # sgd and adagrad, float32 and float64
    assert all(len(files) == 1 for files in workers.values()), workers
