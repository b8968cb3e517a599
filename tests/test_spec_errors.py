"""Malformed specs get one clear error: file, key path and line, no traceback."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conformance.catalog import builtin_spec_dir, load_catalog
from conformance.cli import main
from conformance.specload import load_spec
from conformance.yamlsource import SourceError

GOOD = (builtin_spec_dir() / "sgd.yaml").read_text()


def write(tmp_path: Path, text: str, name: str = "myrule.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


def mutate(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


CASES = [
    # (id, text, key path in message, line needle, words in message)
    ("bad-yaml", mutate("  momentum:\n    default: 0.0", "  momentum:\n    default: 0.0: x"), None, "default: 0.0: x", ["invalid YAML"]),
    ("unknown-key", mutate("    doc: momentum factor (0 turns momentum off)", "    doc: momentum factor\n    defualt: 1"), "hyperparameters.momentum.defualt", "defualt", ["unknown key"]),
    ("missing-field", mutate("    doc: momentum factor (0 turns momentum off)\n", ""), "hyperparameters.momentum.doc", "  momentum:", ["missing required key 'doc'"]),
    ("wrong-type", mutate("    default: 0.0\n    doc: momentum factor", "    default: fast\n    doc: momentum factor"), "hyperparameters.momentum.default", "default: fast", ["fast"]),
    ("unknown-name", mutate("  - u = -lr * d", "  - u = -lr * d * gamma"), "step[3]", "d * gamma", ["unknown name 'gamma'"]),
    ("not-whitelisted", mutate("  - u = -lr * d", "  - u = __import__('os').system('true')"), "step[3]", "__import__", ["not allowed"]),
    ("attribute", mutate("  - u = -lr * d", "  - u = -lr * d.real"), "step[3]", "d.real", ["Attribute is not allowed"]),
    ("duplicate-key", mutate("  maximize:\n", "  momentum:  # again\n    default: 0.5\n    doc: again\n  maximize:\n"), "hyperparameters.momentum", "momentum:  # again", ["duplicate key"]),
    ("assigned-twice", mutate("  - p = p + u", "  - u = u\n  - p = p + u"), "step[4]", "- u = u", ["assigned twice"]),
    ("no-equation", mutate("  - u = -lr * d", "  - u -lr * d"), "step[3]", "- u -lr * d", ["expected 'name = expression'"]),
    ("unknown-variant", mutate("    expect: []", "    expect: [velocity]"), "frameworks.torch.expect[0]", "expect: [velocity]", ["unknown variant 'velocity'"]),
    ("unknown-framework", mutate("  torch:\n    optimizer", "  pytorch:\n    optimizer"), "frameworks.pytorch", "pytorch:", ["unknown framework 'pytorch'"]),
    ("bad-state-map", mutate("    state: {momentum_buffer: b}", "    state: {momentum_buffer: buf}"), "frameworks.torch.state.momentum_buffer", "momentum_buffer: buf", ["not a state slot"]),
    ("bad-arg-expr", mutate("      dampening: dampening", "      dampening: damp"), "frameworks.torch.args.dampening", "dampening: damp", ["unknown name 'damp'"]),
    ("variant-reads-undefined", mutate("      - u = momentum * b - lr * g if nesterov else b", "      - u = momentum * b - lr * zz"), "variants.velocity_momentum.equations[1]", "lr * zz", ["unknown name 'zz'"]),
    ("assign-input", mutate("  - u = -lr * d", "  - lr = lr * 2\n  - u = -lr * d"), "step[3]", "lr = lr * 2", ["input of the step"]),
    # a mode name the adapter does not select, with no optimizer or args of its own: a typo (issue 19)
    ("unknown-mode", mutate("      forloop: {}", "      forlop: {}"), "frameworks.torch.modes.forlop", "forlop: {}", ["unknown mode 'forlop' for torch", "forloop, foreach"]),
    ("bad-when", mutate("      - when: nesterov and (momentum <= 0 or dampening != 0)", "      - when: nesterov and (momentum <= 0 or dampening !="), "frameworks.torch.unsupported[0].when", "dampening !=", ["syntax error"]),
]


@pytest.mark.parametrize("name,text,path,needle,words", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec_is_located(tmp_path, name, text, path, needle, words):
    file = write(tmp_path, text)
    with pytest.raises(SourceError) as info:
        load_spec(file)
    err = info.value
    message = err.render()
    assert str(file) in message
    assert err.line == line_of(text, needle), message
    assert f":{err.line}:" in message
    if path is not None:
        assert f"at {path} " in message, message
    for word in words:
        assert word in message, message
    assert "\n" not in message


def test_every_builtin_spec_validates():
    catalog = load_catalog()
    assert set(catalog.specs) == {"sgd", "rmsprop", "adadelta", "adagrad", "adam", "adamw", "adamax", "nadam", "radam", "lion", "ftrl", "adabelief", "lamb", "adafactor", "muon"}
    for spec in catalog:
        assert spec.frameworks, spec.rule
        for variant in spec.variants.values():
            assert variant.explain and variant.cite


def test_cli_reports_malformed_spec_without_traceback(tmp_path):
    bad = tmp_path / "specs"
    bad.mkdir()
    text = mutate("  - u = -lr * d", "  - u = -lr * d * gamma")
    (bad / "mysgd.yaml").write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "conformance", "list", "--specs", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad / 'mysgd.yaml'}:{line_of(text, 'd * gamma')}: at step[3] ")


def test_user_spec_directory_adds_a_rule(tmp_path, capsys):
    user = tmp_path / "inhouse"
    user.mkdir()
    (user / "sgd_clipped.yaml").write_text(
        textwrap.dedent(
            """\
            title: SGD with elementwise gradient clipping
            summary: In-house rule, p <- p - lr * clip(g, -c, c).
            references: ["our wiki"]
            hyperparameters:
              lr: {default: 0.1, doc: step size}
              c: {default: 1.0, doc: clip bound}
            step:
              - u = -lr * clip(g, -c, c)
              - p = p + u
            """
        )
    )
    assert main(["list", "--json", "--specs", str(user)]) == 0
    out = capsys.readouterr().out
    assert '"sgd_clipped"' in out and '"adam"' in out


def test_duplicate_rule_across_directories_is_an_error(tmp_path):
    user = tmp_path / "dup"
    user.mkdir()
    (user / "adam.yaml").write_text(GOOD)
    with pytest.raises(SourceError, match="already defined"):
        load_catalog([user])


def test_epsilon_written_as_1e_minus_8_is_a_float(tmp_path):
    spec = load_spec(write(tmp_path, mutate("default: 0.0\n    doc: momentum factor", "default: 1e-8\n    doc: momentum factor")))
    assert spec.hyperparameters["momentum"].default == 1e-8


def test_an_integer_argument_stays_an_integer(catalog):
    # optax.adafactor's min_dim_size_to_factor is compared in Python (its jit mode traces floats)
    spec = catalog.get("adafactor")
    args = spec.mode("jax", "factored").native_args(spec.resolve({}))
    assert args["min_dim_size_to_factor"] == 1 and type(args["min_dim_size_to_factor"]) is int
    assert type(args["decay_rate"]) is float


# ---- a spec that inherits another (issue 19: specs share instead of repeating)

CHILD = """\
inherits: myrule
title: My rule, renamed
summary: the same rule with another default
references: ["none"]
hyperparameters:
  momentum:
    default: 0.5
    doc: another default
"""


def test_a_spec_inherits_every_key_it_does_not_write(tmp_path):
    write(tmp_path, GOOD)
    child = load_spec(write(tmp_path, CHILD, "child.yaml"))
    parent = load_spec(tmp_path / "myrule.yaml")
    assert child.rule == "child" and child.title == "My rule, renamed"
    assert child.hyperparameters["momentum"].default == 0.5
    assert child.hyperparameters["lr"] == parent.hyperparameters["lr"]
    assert [eq.source for eq in child.step] == [eq.source for eq in parent.step]
    assert set(child.variants) == set(parent.variants) and set(child.modes) == set(parent.modes)
    assert child.cases == ()  # pinned cases are a rule's own
    assert all(m.file == str(tmp_path / "myrule.yaml") for m in child.modes.values())  # where each mode is declared


def test_null_removes_an_inherited_entry_and_a_removal_of_nothing_is_located(tmp_path):
    write(tmp_path, GOOD)
    child = load_spec(write(tmp_path, CHILD + "frameworks:\n  tensorflow: null\n  mxnet: null\nvariants:\n  velocity_momentum: null\n", "child.yaml"))
    assert not any(fw in ("tensorflow", "mxnet") for fw, _ in child.modes) and "velocity_momentum" not in child.variants
    text = CHILD + "variants:\n  no_such_variant: null\n"
    with pytest.raises(SourceError) as exc:
        load_spec(write(tmp_path, text, "child.yaml"))
    e = exc.value
    assert e.file.endswith("child.yaml") and e.line == line_of(text, "no_such_variant") and "does not define" in e.message


def test_an_error_in_an_inherited_part_names_the_parents_file_and_line(tmp_path):
    bad = mutate("      dampening: dampening", "      dampening: damp")
    write(tmp_path, bad)
    with pytest.raises(SourceError) as exc:
        load_spec(write(tmp_path, CHILD, "child.yaml"))
    e = exc.value
    assert e.file.endswith("myrule.yaml") and e.line == line_of(bad, "dampening: damp")
    assert "frameworks.torch.args.dampening" in str(e) and "unknown name 'damp'" in e.message
    # and an error in the child's own part names the child
    text = CHILD.replace("    default: 0.5", "    default: half")
    with pytest.raises(SourceError) as exc:
        load_spec(write(tmp_path, text, "child.yaml"))
    assert exc.value.file.endswith("child.yaml") and exc.value.line == line_of(text, "default: half")


@pytest.mark.parametrize("inherits,words", [("nosuch", "no spec 'nosuch' to inherit"), ("child", "inherit in a circle"),
                                            ("../x", "inherits names a rule")])
def test_a_bad_inherits_is_located(tmp_path, inherits, words):
    text = CHILD.replace("inherits: myrule", f"inherits: {inherits}")
    with pytest.raises(SourceError) as exc:
        load_spec(write(tmp_path, text, "child.yaml"))
    assert exc.value.file.endswith("child.yaml") and exc.value.line == 1 and words in exc.value.message


def test_adamw_inherits_adams_hyperparameters_state_and_precision_variants():
    specs = load_catalog()
    adam, adamw = specs.get("adam"), specs.get("adamw")
    for name in ("beta1", "beta2", "eps", "amsgrad", "maximize"):
        assert adamw.hyperparameters[name] == adam.hyperparameters[name]
    assert adamw.hyperparameters["weight_decay"].default == 0.01 != adam.hyperparameters["weight_decay"].default
    for name in ("amsgrad_corrected_max", "folded_step_size", "bias_correction_float32_betas", "per_slice_square"):
        assert [(t, e.source) for t, e in adamw.variants[name].equations] == [(t, e.source) for t, e in adam.variants[name].equations]
    assert "decoupled_weight_decay" not in adamw.variants and "coupled_weight_decay" in adamw.variants
    assert [eq.source for eq in adamw.step][-1] == "p = p * (1 - lr * weight_decay) + u"
    assert not any(fw == "mxnet" for fw, _ in adamw.modes)


# ---- framework-wide declarations (specs/frameworks/<framework>.yaml), written once

def test_every_section_of_a_framework_without_maximize_refuses_it_from_one_declaration():
    from conformance.registry import FRAMEWORKS

    said = {"tensorflow": "Keras and TF1 optimizers have no maximize option", "jax": "optax has no maximize option",
            "mxnet": "mxnet optimizers have no maximize option"}
    checked = 0
    for spec in load_catalog():
        if "maximize" not in spec.hyperparameters:
            continue
        for (fw, mode_name), mode in spec.modes.items():
            if mode.unsupported_reason(dict(spec.defaults)) is not None:
                continue  # (the defaults are refused for another reason: v1 Adagrad's initial_accumulator_value 0)
            if mode.runs_on in said:
                hp = {**spec.defaults, "maximize": True}
                assert mode.unsupported_reason(hp) == said[mode.runs_on], (spec.rule, fw, mode_name)
                checked += 1
            elif mode.runs_on == "torch":
                assert mode.unsupported_reason({**spec.defaults, "maximize": True}) != said.get("tensorflow")
    assert checked > 50 and set(said) <= set(FRAMEWORKS)
    for spec_file in builtin_spec_dir().glob("*.yaml"):
        assert "no maximize option" not in spec_file.read_text(), f"{spec_file.name} repeats a framework-wide declaration"


def test_an_error_in_a_framework_declaration_names_its_file_key_path_and_line(tmp_path, monkeypatch):
    from conformance import specload as spec_module

    (tmp_path / "frameworks").mkdir()
    text = "summary: x\nunsupported:\n  - when: maximize and\n    reason: broken\n"
    (tmp_path / "frameworks" / "jax.yaml").write_text(text)
    monkeypatch.setattr(spec_module, "builtin_spec_dir", lambda: tmp_path)
    spec_module.framework_declarations.cache_clear()
    try:
        with pytest.raises(SourceError) as exc:
            load_spec(builtin_spec_dir() / "sgd.yaml")
        e = exc.value
        assert e.file.endswith("frameworks/jax.yaml") and e.line == 3 and e.path == ("unsupported", 0, "when")
        assert "syntax error" in e.message
    finally:
        spec_module.framework_declarations.cache_clear()


def test_an_inherited_mapping_keeps_the_parents_order_with_replacements_in_place():
    """Hypothesis draws hyperparameters in the spec's order: AdamW inheriting
    Adam's must draw the cases it drew when it wrote them all itself."""
    adamw = load_catalog().get("adamw")
    assert list(adamw.hyperparameters) == ["lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize"]
    assert list(adamw.variants)[:3] == ["lazy", "epsilon_hat", "amsgrad_corrected_max"]  # replaced in place, removed ones gone
    assert list(adamw.variants)[-1] == "coupled_weight_decay"  # a new entry after the inherited ones
