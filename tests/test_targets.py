"""Any implementation as a target: a user's optimizer (a library's, or a team's
own) named in a spec directory or on the command line, checked against the
built-in specs, and imported only with the user's leave (`--allow-import`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conformance import catalog as catalog_module
from conformance.catalog import builtin_spec_dir, load_catalog
from conformance.cli import main
from conformance.outcomes import CONFORMS, CRASH, DIVERGES
from conformance.cells import Selection
from conformance.driver import PROFILES
from conformance.session import Options, Session
from conformance.yamlsource import SourceError

torch = pytest.importorskip("torch")

#: the example's in-house AdamW (examples/inhouse), copied under the test's own module names
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "inhouse" / "inhouse_optim.py"


def _module(root: Path, name: str, *, planted_bug: bool = False) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    if planted_bug:  # the first moment is not bias-corrected (m, not m / (1 - beta1**t))
        right = 'value=-group["lr"] / (1 - beta1 ** t)'
        assert right in text
        text = text.replace(right, 'value=-group["lr"]')
    (root / f"{name}.py").write_text(text, encoding="utf-8")


def _target(specs: Path, column: str, optimizer: str, **extra) -> None:
    section = {
        "framework": "torch",
        "optimizer": optimizer,
        "source": f"{optimizer} (a test's)",
        "args": {"lr": "lr", "betas": ["beta1", "beta2"], "eps": "eps", "weight_decay": "weight_decay"},
        "state": {"exp_avg": "m", "exp_avg_sq": "v"},
        "modes": {"default": {}},
        "unsupported": [{"when": "amsgrad", "reason": "no amsgrad"}, {"when": "maximize", "reason": "no maximize"}],
        "sparse": {"semantics": "unsupported", "note": "dense only"},
        **extra,
    }
    file = specs / f"{column}.yaml"
    data = yaml.safe_load(file.read_text()) if file.exists() else {"extends": "adamw", "frameworks": {}}
    data["frameworks"][column] = section
    file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A spec directory and a module directory on the path (in-process adapters import from it)."""
    specs, code = tmp_path / "specs", tmp_path / "code"
    specs.mkdir()
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setenv("PYTHONPATH", str(code))
    return specs, code


def _session(specs: Path, frameworks: tuple[str, ...], allow: tuple[str, ...], out: Path | None = None) -> Session:
    catalog = load_catalog([specs])
    options = Options(selection=Selection(rules=("adamw",), frameworks=frameworks, devices=("cpu",), dtypes=("float64",), gradients=("dense",)),
                      profile=PROFILES["ci"], examples=8, isolation="inprocess", allow_import=frozenset(allow))
    options.with_default_frameworks(catalog)
    return Session(catalog, options, out)


def test_a_target_found_by_spec_runs_beside_the_framework_and_conforms(user, tmp_path):
    specs, code = user
    _module(code, "team_optim")
    _target(specs, "team.AdamW", "team_optim.AdamW")
    out = tmp_path / "run"
    session = _session(specs, ("torch", "team.AdamW"), ("team_optim",), out)
    try:
        session.write_environment(["torch", "team.AdamW"])
        cells = session.cells()
        assert {c.framework for c in cells} == {"torch", "team.AdamW"}  # a column of its own
        mine = [c for c in cells if c.framework == "team.AdamW"]
        assert [c.id for c in mine] == ["adamw[team.AdamW-default-cpu-float64]"]
        result = session.run_cell(mine[0])
        assert result.outcome == CONFORMS and not result.failed
        assert len(result.records) >= 8 and all(r.observed is not None and "m" in r.observed.state for r in result.records if r.outcome == CONFORMS)
        described = session.describe("team.AdamW")
        assert described["target_of"] == "torch" and "team_optim" in described["imports"]
    finally:
        session.close()
    # the report says which module the target imported, from where
    from conformance.report import write_report
    from conformance.summary import write_summary

    html = Path(write_report(out, write_summary(out), load_catalog([specs]))).read_text()
    assert "a target, run by torch" in html and "imported: team_optim (no version)" in html and str(code / "team_optim.py") in html


def test_a_planted_bug_diverges_at_its_first_step(user):
    specs, code = user
    _module(code, "buggy_optim", planted_bug=True)
    _target(specs, "buggy.AdamW", "buggy_optim.AdamW")
    session = _session(specs, ("buggy.AdamW",), ("buggy_optim",))
    try:
        (cell,) = session.cells()
        result = session.run_cell(cell)
    finally:
        session.close()
    assert result.failed and result.outcome == DIVERGES
    assert result.minimal is not None and result.minimal.verdict.against_expected.first_divergent_step == 1


def test_a_target_whose_module_is_not_allowed_is_refused_before_anything_is_imported(user):
    specs, code = user
    (code / "never_imported.py").write_text("raise SystemExit('imported without leave')\n", encoding="utf-8")
    _target(specs, "quiet.AdamW", "never_imported.AdamW")
    catalog = load_catalog([specs])
    options = Options(selection=Selection(rules=("adamw",)), isolation="inprocess")
    with pytest.raises(ValueError, match=r"--allow-import never_imported") as exc:
        options.with_default_frameworks(catalog)
    assert "quiet.AdamW" in str(exc.value) and str(specs / "quiet.AdamW.yaml") in str(exc.value)


def test_a_target_that_crashes_on_import_is_crash_and_the_run_goes_on(user):
    specs, code = user
    (code / "crashy_optim.py").write_text("raise RuntimeError('this module is broken')\n", encoding="utf-8")
    _module(code, "team_optim")
    _target(specs, "crashy.AdamW", "crashy_optim.AdamW")
    _target(specs, "team.AdamW", "team_optim.AdamW")
    session = _session(specs, ("crashy.AdamW", "team.AdamW"), ("crashy_optim", "team_optim"))
    try:
        results = {c.framework: session.run_cell(c) for c in session.cells()}
    finally:
        session.close()
    crashed = results["crashy.AdamW"]
    assert crashed.failed and crashed.outcome == CRASH
    assert "importing crashy_optim" in crashed.records[0].reason and "this module is broken" in crashed.records[0].reason
    assert results["team.AdamW"].outcome == CONFORMS


def test_a_target_found_by_command_line(user, tmp_path):
    specs, code = user
    _module(code, "cli_optim")
    out = tmp_path / "out"
    code_ = main(["check", "torch:cli_optim.AdamW", "--rule", "adamw", "--examples", "4", "--jobs", "1", "--devices", "cpu",
                  "--dtypes", "float32", "--isolation", "inprocess", "--no-progress", "--out", str(out)])
    assert code_ == 0
    written = list((out / "check-spec").glob("*.yaml"))
    assert len(written) == 1 and yaml.safe_load(written[0].read_text())["frameworks"]["cli_optim.AdamW"]["optimizer"] == "cli_optim.AdamW"
    summary = (out / "summary.json").read_text()
    assert "adamw[cli_optim.AdamW-default-cpu-float32]" in summary


def test_builtin_specs_never_name_a_module_outside_the_frameworks(tmp_path, monkeypatch):
    assert load_catalog().targets() == {} and load_catalog().imports() == {}
    fake = tmp_path / "builtin"
    fake.mkdir()
    data = yaml.safe_load((builtin_spec_dir() / "adamw.yaml").read_text())
    data["cases"] = []
    parent = yaml.safe_load((builtin_spec_dir() / "adam.yaml").read_text())  # (adamw inherits adam)
    (fake / "adam.yaml").write_text(yaml.safe_dump(dict(parent, cases=[])), encoding="utf-8")
    data["frameworks"]["sneaky.AdamW"] = dict(data["frameworks"]["torch"], framework="torch", optimizer="sneaky.AdamW")
    (fake / "adamw.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    monkeypatch.setattr(catalog_module, "builtin_spec_dir", lambda: fake)
    with pytest.raises(SourceError, match="a built-in spec names only the frameworks' own optimizers"):
        load_catalog()


def test_target_sections_are_checked_with_file_and_line(user):
    specs, _ = user
    (specs / "bad.yaml").write_text("extends: adamw\nframeworks:\n  mine.AdamW:\n    optimizer: mine.AdamW\n    source: x\n"
                                    "    args: {lr: lr}\n    modes: {default: {}}\n    sparse: {semantics: unsupported}\n", encoding="utf-8")
    with pytest.raises(SourceError) as exc:
        load_catalog([specs])
    assert exc.value.line == 3 and "framework: torch" in exc.value.message
    (specs / "bad.yaml").write_text("extends: nosuchrule\nframeworks:\n  mine.AdamW: {}\n", encoding="utf-8")
    with pytest.raises(SourceError, match="missing required key|no rule 'nosuchrule'"):
        load_catalog([specs])
    (specs / "bad.yaml").write_text("extends: adamw\nframeworks:\n  torch:\n    framework: torch\n    optimizer: torch.optim.AdamW\n    source: x\n"
                                    "    args: {lr: lr}\n    modes: {forloop: {}}\n    sparse: {semantics: unsupported}\n", encoding="utf-8")
    with pytest.raises(SourceError, match="already has a column 'torch'"):
        load_catalog([specs])


def test_a_users_file_names_its_own_variant_and_expects_it(user):
    specs, code = user
    _module(code, "documented_optim", planted_bug=True)
    variant = {"no_first_moment_correction": {
        "explain": "the first moment is not bias-corrected (the library documents it)",
        "cite": "documented_optim.py AdamW.step",
        "equations": ["m_hat = m"],
    }}
    _target(specs, "documented.AdamW", "documented_optim.AdamW", expect=["no_first_moment_correction"])
    data = yaml.safe_load((specs / "documented.AdamW.yaml").read_text())
    (specs / "documented.AdamW.yaml").write_text(yaml.safe_dump({"extends": "adamw", "variants": variant, "frameworks": data["frameworks"]}, sort_keys=False))
    session = _session(specs, ("documented.AdamW",), ("documented_optim",))
    try:
        (cell,) = session.cells()
        result = session.run_cell(cell)
    finally:
        session.close()
    assert not result.failed and result.outcome == "known-divergence"
    (specs / "documented.AdamW.yaml").write_text(yaml.safe_dump({"extends": "adamw", "variants": {"epsilon_hat": variant["no_first_moment_correction"]},
                                                                 "frameworks": data["frameworks"]}, sort_keys=False))
    with pytest.raises(SourceError, match="already has a variant 'epsilon_hat'"):
        load_catalog([specs])


def _copied_target(specs: Path, rule: str, framework: str, column: str, optimizer: str, modes: dict) -> None:
    """A target whose section is the built-in one of `framework`, pointed at a user's optimizer."""
    data = yaml.safe_load((builtin_spec_dir() / f"{rule}.yaml").read_text())
    section = dict(data["frameworks"][framework], framework=framework, optimizer=optimizer, modes=modes)
    section.pop("known_issues", None)
    # (entries name the modes kept; those only for the modes of other optimizers, e.g. TF1's, go with them)
    kept = []
    for u in section.get("unsupported", []):
        if u.get("modes") is not None:
            u = dict(u, modes=[m for m in u["modes"] if m in modes])
            if not u["modes"]:
                continue
        kept.append(u)
    section["unsupported"] = kept
    (specs / f"{column}.yaml").write_text(yaml.safe_dump({"extends": rule, "frameworks": {column: section}}, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize("framework, module, column, modes", [
    # an optax GradientTransformation factory: a chain of optax's own pieces (learning_rate
    # may be a schedule, as for optax's aliases: a case with a per-step learning rate passes one)
    ("jax", "def my_adam(learning_rate, b1, b2, eps, eps_root):\n"
            "    import optax\n"
            "    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root), optax.scale_by_learning_rate(learning_rate))\n",
     "mine.optax_adam", {"eager": {}}),
    # a Keras optimizer subclass
    ("tensorflow", "import keras\n\nclass MyAdam(keras.optimizers.Adam):\n    pass\n", "mine.KerasAdam", {"eager": {}}),
])
def test_optax_and_keras_targets_follow_what_their_framework_computes(user, framework, module, column, modes):
    pytest.importorskip("optax" if framework == "jax" else "tensorflow")
    specs, code = user
    (code / f"mine_{framework}.py").write_text(module, encoding="utf-8")
    _copied_target(specs, "adam", framework, column, f"mine_{framework}." + ("my_adam" if framework == "jax" else "MyAdam"), modes)
    catalog = load_catalog([specs])
    options = Options(selection=Selection(rules=("adam",), frameworks=(column,), devices=("cpu",), dtypes=("float32",), gradients=("dense",)),
                      profile=PROFILES["ci"], examples=6, isolation="worker", allow_import=frozenset({f"mine_{framework}"}))
    options.with_default_frameworks(catalog)
    session = Session(catalog, options)
    try:
        (cell,) = session.cells()
        result = session.run_cell(cell)
    finally:
        session.close()
    assert not result.failed, [(r.outcome, r.reason, r.detail[-600:]) for r in result.records if r.failing][:2]
    assert result.outcome in (CONFORMS, "known-divergence") and len(result.records) >= 6


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failing_run_prints_a_replay_command_whose_case_fails_again(user, tmp_path, capsys, jobs):
    """The end of a failing run names each failing cell's minimal case with the
    command that replays it, under `--jobs 1` and in the parent of a `--jobs`
    run (whose shards wrote the cases), and the case replays as that failure."""
    specs, code = user
    _module(code, "buggy_optim", planted_bug=True)
    _target(specs, "buggy.AdamW", "buggy_optim.AdamW")
    out = tmp_path / "out"
    status = main(["run", "--specs", str(specs), "--rules", "adamw", "--frameworks", "buggy.AdamW", "--devices", "cpu",
                   "--dtypes", "float32,float64", "--gradients", "dense", "--examples", "4", "--jobs", jobs, "--no-progress",
                   "--allow-import", "buggy_optim", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 1, text
    commands = [line.split("conformance replay ", 1)[1].split()[0] for line in text.splitlines() if "conformance replay " in line]
    assert len(commands) == 2, text  # float32 and float64
    for case_file in commands:
        assert Path(case_file).is_file()
        assert main(["replay", case_file, "--json", "--specs", str(specs), "--allow-import", "buggy_optim"]) == 1
        replayed = json.loads(capsys.readouterr().out)
        assert replayed["outcome"] == "diverges" and replayed["first_divergent_step"] == 1
