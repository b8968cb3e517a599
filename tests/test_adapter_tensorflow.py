"""The TensorFlow adapter against the real TensorFlow/Keras (skips without it).

Torch is imported first when present: importing TensorFlow before torch in
one process is known to crash some builds.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401  (import order, see the module docstring)

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

from conformance.adapters import tensorflow as tfa  # noqa: E402
from conformance.outcomes import KNOWN  # noqa: E402
from conformance.execution import InProcessHost  # noqa: E402
from conformance.cells import Cell  # noqa: E402
from conformance.driver import PROFILES, run_cell  # noqa: E402


def _request(**over):
    req = {
        "optimizer": "keras.optimizers.Adam",
        "args": {"learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-3},
        "mode": "eager",
        "device": "cpu",
        "dtype": "float32",
        "params": np.array([1.0, -2.0, 0.5]),
        "grads": np.array([[0.1, 0.2, -0.3], [0.0, 1.0, 2.0], [-1.0, 0.5, 0.25]]),
        "lr_arg": "learning_rate",
        "lr_schedule": None,
        "state": ["momentum", "velocity"],
        "sparse_rows": None,
    }
    req.update(over)
    return req


def test_describe_reports_keras_on_the_tensorflow_backend():
    d = tfa.describe()
    assert d["versions"]["keras_backend"] == "tensorflow"
    assert d["devices"]["cpu"]["available"]
    assert d["devices"]["gpu"]["available"] or d["devices"]["gpu"]["reason"]


def test_modes_agree_and_slots_are_read():
    eager = tfa.run(_request())
    assert eager["params"].shape == (3, 3) and set(eager["state"]) == {"momentum", "velocity"}
    # the first moment after step 1 is (1 - beta1) g
    np.testing.assert_allclose(eager["state"]["momentum"][0], 0.1 * np.array([0.1, 0.2, -0.3]), rtol=1e-6)
    for mode in ("function", "xla"):
        np.testing.assert_allclose(tfa.run(_request(mode=mode))["params"], eager["params"], rtol=1e-6)


def test_a_spec_mode_with_its_own_arguments_runs_eagerly():
    """Adafactor's mode no_relative_step sets relative_step=False (spec validation
    lets a mode of another name through only with its own optimizer or args)."""
    request = _request(optimizer="keras.optimizers.Adafactor", args={"learning_rate": 0.5}, state=["velocity"])
    eager = tfa.run(request)
    own = tfa.run(dict(request, mode="no_relative_step", args={"learning_rate": 0.5, "relative_step": False}))
    # ... and Keras ignores the flag: the same values (rho_t = min(lr, 1/sqrt(t)) either way)
    np.testing.assert_array_equal(own["params"], eager["params"])


def test_learning_rate_schedule_reaches_keras_and_tf1():
    sched = [0.1, 0.01, 0.001]
    g = np.array([[1.0], [1.0], [1.0]])
    out = tfa.run(_request(optimizer="keras.optimizers.SGD", args={"learning_rate": 0.5}, params=np.array([0.0]), grads=g, lr_schedule=sched, state=[]))
    np.testing.assert_allclose(out["params"][:, 0], -np.cumsum(sched), rtol=1e-6)
    v1 = tfa.run(
        _request(
            optimizer="tf.compat.v1.train.MomentumOptimizer", args={"learning_rate": 0.5, "momentum": 0.5}, mode="v1",
            params=np.array([0.0]), grads=g, lr_schedule=sched, state=["momentum"],
        )
    )
    acc = np.array([1.0, 1.5, 1.75])  # a = momentum*a + g, lr outside
    np.testing.assert_allclose(v1["params"][:, 0], -np.cumsum(np.array(sched) * acc), rtol=1e-6)
    np.testing.assert_allclose(v1["state"]["momentum"][:, 0], acc, rtol=1e-6)


def test_unknown_optimizer_and_device_are_skips():
    with pytest.raises(NotImplementedError):
        tfa.run(_request(optimizer="keras.optimizers.NoSuchThing"))
    with pytest.raises(NotImplementedError):
        tfa.run(_request(device="tpu"))


def test_defaults_are_read_from_the_constructor():
    d = tfa.defaults({"optimizer": "keras.optimizers.Adam", "mode": "eager"})
    assert d["epsilon"] == 1e-7 and d["learning_rate"] == 0.001
    assert tfa.defaults({"optimizer": "keras.optimizers.AdamW", "mode": "eager"})["weight_decay"] == 0.004
    assert tfa.defaults({"optimizer": "tf.compat.v1.train.RMSPropOptimizer", "mode": "v1"})["epsilon"] == 1e-10


@pytest.mark.parametrize(
    "rule, variant",
    [
        ("adam", "epsilon_hat"),
        ("rmsprop", "eps_inside_sqrt"),
        ("sgd", "velocity_momentum"),
    ],
)
def test_seed_facts_are_found_in_keras(catalog, rule, variant):
    cell = Cell(rule, "tensorflow", "eager", "cpu", "float64")
    result = run_cell(catalog.get(rule), cell, InProcessHost("tensorflow"), profile=PROFILES["ci"], seed=5, examples=20, database=None)
    assert not result.failed, [r.reason for r in result.records if r.failing]
    matched = [r.verdict.matched_variant for r in result.records if r.outcome == KNOWN and r.verdict is not None]
    assert any(m and variant in m for m in matched), matched


@pytest.mark.skipif(not tfa.KERAS3, reason="Keras 2 has keras.optimizers.legacy")
def test_keras2_legacy_optimizers_are_a_skip_with_keras_reason_under_keras3(catalog):
    """Keras 3 has no keras.optimizers.legacy: each legacy cell is unsupported,
    with Keras' reason, and its defaults cannot be introspected (a row with the
    reason, not a crash of the run or the report)."""
    with pytest.raises(NotImplementedError, match="not supported in Keras 3"):
        tfa.run(_request(optimizer="keras.optimizers.legacy.Adam", mode="legacy", args={"learning_rate": 0.01}, state=["m", "v"]))
    with pytest.raises(NotImplementedError, match="not supported in Keras 3"):
        tfa.defaults({"optimizer": "keras.optimizers.legacy.Adadelta", "mode": "legacy"})
    spec = catalog.get("rmsprop")
    host = InProcessHost("tensorflow")
    for mode in ("legacy", "legacy_plain"):
        result = run_cell(spec, Cell("rmsprop", "tensorflow", mode, "cpu", "float32"), host, profile=PROFILES["ci"], seed=1,
                          examples=3, database=None)
        assert result.outcome == "unsupported" and result.records
        assert all(r.outcome == "unsupported" for r in result.records)
        assert any("not supported in Keras 3" in r.reason for r in result.records)
