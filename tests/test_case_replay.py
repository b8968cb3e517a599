"""Case files: exact JSON round trip, located errors, and `conformance replay`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.case import Case, CaseError
from conformance.cli import main
from test_kernel_papers import adadelta_algorithm1, adagrad_duchi, adam_algorithm1, adam_section2, adamw_algorithm2, sutskever_momentum

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def base_case(**over):
    case = {
        "rule": "adam",
        "dtype": "float64",
        "params": [1.0, 2.0],
        "grads": [[0.1, 0.2], [0.3, -0.4]],
    }
    case.update(over)
    return case


def replay(tmp_path, case: dict, capsys) -> dict:
    path = tmp_path / "case.json"
    path.write_text(json.dumps(case))
    assert main(["replay", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=2, max_size=2))
def test_float64_round_trip_is_exact(values):
    case = Case.from_dict(base_case(params=values, grads=[values]))
    again = Case.from_dict(json.loads(case.to_json()))
    assert again.params.tobytes() == np.array(values).tobytes()
    assert again.grads.tobytes() == case.grads.tobytes()


def test_inputs_are_rounded_to_the_case_dtype():
    case = Case.from_dict(base_case(dtype="float32", params=[0.1, 1 / 3]))
    assert case.params.tolist() == [float(np.float32(0.1)), float(np.float32(1 / 3))]
    case16 = Case.from_dict(base_case(dtype="bfloat16", params=[1.0 + 2**-9, 3.0]))
    assert case16.params.tolist() == [1.0, 3.0]


@pytest.mark.parametrize(
    "over,path,words",
    [
        ({"grads": [[0.1, 0.2, 0.3]]}, "grads[0]", "differs from params shape"),
        ({"lr_schedule": [0.1]}, "lr_schedule", "1 learning rates for 2 steps"),
        ({"dtype": "float8"}, "dtype", "unknown dtype"),
        ({"framework": "py-torch"}, "framework", "unknown framework"),  # (not even a target's name)
        ({"framework": "torch", "variant": "epsilon_hat"}, "variant", "reference kernel"),
        ({"params": [[1.0], [2.0, 3.0]]}, "params", "rectangular"),
        ({"grads": []}, "grads", "at least one step"),
        ({"params": [[1.0], [2.0]], "grads": [[[0.1], [0.2]]], "sparse_rows": [[5]]}, "sparse_rows[0][0]", "outside"),
        ({"params": [[1.0], [2.0]], "grads": [[[0.1], [0.2]]], "sparse_rows": [[0]]}, "grads[0]", "not listed in sparse_rows"),
        ({"learning_rate": 0.1}, "learning_rate", "unknown key"),
        ({"rule": None}, "rule", "string"),
    ],
)
def test_bad_case_is_located(over, path, words):
    with pytest.raises(CaseError) as info:
        Case.from_dict(base_case(**over), "c.json")
    message = info.value.render()
    assert message.startswith(f"c.json: at {path} "), message
    assert words in message, message


def test_unknown_hyperparameter_is_a_clear_cli_error(tmp_path, capsys):
    path = tmp_path / "case.json"
    path.write_text(json.dumps(base_case(hyperparameters={"beta_1": 0.9})))
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: rule adam has no hyperparameter 'beta_1'")


def test_replay_of_examples_from_a_subprocess():
    for example in sorted(EXAMPLES.glob("*.json")):
        proc = subprocess.run(
            [sys.executable, "-m", "conformance", "replay", str(example), "--json"], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        case = Case.load(example)
        assert len(data["trajectory"]) == case.steps
        assert np.shape(data["trajectory"][0]) == case.shape


# ---- `conformance replay` reproduces the published algorithms -----------------

RNG = np.random.default_rng(7)
P0 = RNG.normal(size=(2, 3))
GRADS = RNG.normal(size=(5, 2, 3))


def as_case(rule, hp, variant=None, lr_schedule=None):
    case = {"rule": rule, "dtype": "float64", "hyperparameters": hp, "params": P0.tolist(), "grads": GRADS.tolist()}
    if variant:
        case["variant"] = variant
    if lr_schedule:
        case["lr_schedule"] = lr_schedule
    return case


def test_replay_adam_algorithm_1(tmp_path, capsys):
    out = replay(tmp_path, as_case("adam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)), capsys)
    np.testing.assert_allclose(out["trajectory"], adam_algorithm1(P0, GRADS, 0.01, 0.9, 0.999, 1e-8), rtol=1e-13)


def test_replay_adam_section_2(tmp_path, capsys):
    out = replay(tmp_path, as_case("adam", dict(lr=0.01, eps=1e-3), "epsilon_hat"), capsys)
    np.testing.assert_allclose(out["trajectory"], adam_section2(P0, GRADS, 0.01, 0.9, 0.999, 1e-3), rtol=1e-13)


def test_replay_adamw_algorithm_2(tmp_path, capsys):
    etas = [1.0, 0.5, 0.5, 0.25, 0.1]
    out = replay(tmp_path, as_case("adamw", dict(weight_decay=0.5), lr_schedule=[0.01 * e for e in etas]), capsys)
    want = adamw_algorithm2(P0, GRADS, 0.01, 0.9, 0.999, 1e-8, 0.005, etas)
    np.testing.assert_allclose(out["trajectory"], want, rtol=1e-12)


def test_replay_adadelta_algorithm_1(tmp_path, capsys):
    out = replay(tmp_path, as_case("adadelta", dict(lr=1.0, rho=0.95, eps=1e-6)), capsys)
    np.testing.assert_allclose(out["trajectory"], adadelta_algorithm1(P0, GRADS, 0.95, 1e-6), rtol=1e-13)


def test_replay_sutskever_momentum(tmp_path, capsys):
    lrs = [0.1, 0.1, 0.02, 0.3, 0.05]
    out = replay(tmp_path, as_case("sgd", dict(momentum=0.9), "velocity_momentum", lrs), capsys)
    np.testing.assert_allclose(out["trajectory"], sutskever_momentum(P0, GRADS, lrs, 0.9), rtol=1e-13)


def test_replay_adagrad(tmp_path, capsys):
    out = replay(tmp_path, as_case("adagrad", dict(lr=0.1, eps=1e-10)), capsys)
    np.testing.assert_allclose(out["trajectory"], adagrad_duchi(P0, GRADS, 0.1, 1e-10), rtol=1e-13)


def test_framework_replay_gives_the_outcome_and_errors(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "case.json"
    path.write_text(json.dumps(base_case(framework="torch", mode="foreach", device="cpu")))
    assert main(["replay", str(path), "--json", "--isolation", "inprocess"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["outcome"] == "conforms"
    assert data["matched_variant"] == "canonical"
    assert data["first_divergent_step"] is None
    for key in ("max_abs_error", "max_rel_error", "max_ulp_error", "reference_trajectory"):
        assert key in data
    assert len(data["reference_trajectory"]) == data["steps"]


def test_framework_replay_without_mode_and_device_takes_the_framework_default_and_shows_its_values(tmp_path, capsys):
    """A case may omit mode and device (the case format makes them optional):
    replay takes the framework's default path (the spec section's first mode,
    torch forloop) on its first device (cpu), and its JSON carries what the
    framework computed beside the reference (issue 17)."""
    pytest.importorskip("torch")
    path = tmp_path / "case.json"
    path.write_text(json.dumps(base_case(framework="torch")))
    assert main(["replay", str(path), "--json", "--isolation", "inprocess"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["mode"], data["device"], data["outcome"]) == ("forloop", "cpu", "conforms")
    assert len(data["trajectory"]) == len(data["reference_trajectory"]) == data["steps"]
    np.testing.assert_allclose(data["trajectory"], data["reference_trajectory"], rtol=1e-12)
    assert set(data["state"]) >= {"m", "v"} and data["precision"]["outcome"] == "exact"
