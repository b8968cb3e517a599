"""Malformed specs get one clear error: file, key path and line, no traceback."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conformance.catalog import builtin_spec_dir, load_catalog
from conformance.cli import main
from conformance.spec import load_spec
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
