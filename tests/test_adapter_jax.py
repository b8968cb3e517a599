"""The JAX / Optax adapter, in-process (skipped where optax is not importable).

What the rest of the suite cannot see from outcomes alone: that the modes
agree, that the jit mode compiles once per (optimizer, static arguments,
shape, dtype, device, padded step count) and not once per example, that a
per-step learning rate is honoured, that low-precision cases compute in
their own dtype with hyperparameters weakly typed (what users' Python floats
give), and that `defaults` reports optax's own defaults.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

optax = pytest.importorskip("optax")
jax = pytest.importorskip("jax")

from conformance.adapters import jax as adapter  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402

NP_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float64": np.float64}


def _rounded(x, dtype):
    return np.asarray(x, dtype=np.float64).astype(NP_DTYPES[dtype]).astype(np.float64)


def _request(optimizer="optax.adam", args=None, *, mode="eager", dtype="float32", params=None, grads=None,
             lr_schedule=None, state=("mu", "nu"), lr_arg="learning_rate", shape=(3, 4), steps=5, seed=0):
    rng = np.random.default_rng(seed)
    if params is None:
        params = rng.standard_normal(shape)
    if grads is None:
        grads = rng.standard_normal((steps,) + tuple(np.shape(params)))
    return {
        "optimizer": optimizer,
        "args": dict(args if args is not None else {"learning_rate": 0.01, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}),
        "mode": mode,
        "device": "cpu",
        "dtype": dtype,
        "params": _rounded(params, dtype),
        "grads": _rounded(grads, dtype),
        "lr_arg": lr_arg,
        "lr_schedule": lr_schedule,
        "state": list(state),
        "sparse_rows": None,
    }


def _optax_loop(optimizer, args, params, grads, dtype, lr_schedule=None, lr_arg="learning_rate"):
    """A plain user loop: the alias built with Python floats, a schedule for a per-step lr."""
    kwargs = dict(args)
    if lr_schedule is not None:
        lrs = jnp.asarray(lr_schedule, dtype=jnp.float64)
        kwargs[lr_arg] = lambda count: lrs[count]
    tx = adapter._factory({"optimizer": optimizer})(**kwargs)
    p = jnp.asarray(params, dtype=adapter._DTYPES[dtype])
    state = tx.init(p)
    out = []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, dtype=p.dtype), state, p)
        p = optax.apply_updates(p, updates)
        out.append(np.asarray(p).astype(np.float64))
    return np.stack(out), state


def test_describe():
    d = adapter.describe()
    assert d["framework"] == adapter.FRAMEWORK == "jax"
    assert set(d["versions"]) == {"jax", "jaxlib", "optax", "numpy", "python"}
    assert d["versions"]["optax"] == optax.__version__
    assert d["devices"]["cpu"]["available"] is True
    gpu = d["devices"]["gpu"]
    assert isinstance(gpu["available"], bool)
    if not gpu["available"]:
        assert gpu["reason"]
    assert adapter.DEVICES == ("cpu", "gpu")
    assert jax.config.jax_enable_x64  # float64 cases need it


def test_defaults_are_optax_signature_defaults():
    d = adapter.defaults({"optimizer": "optax.adam", "mode": "eager"})
    assert d == {"learning_rate": "<required>", "b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0,
                 "mu_dtype": None, "nesterov": False}
    assert adapter.defaults({"optimizer": "optax.adam", "mode": "jit"}) == d
    ada = adapter.defaults({"optimizer": "optax.adagrad", "mode": "eager"})
    assert ada["eps"] == 1e-7 and ada["initial_accumulator_value"] == 0.1  # torch: 1e-10 and 0
    assert adapter.defaults({"optimizer": "optax.adamw", "mode": "eager"})["weight_decay"] == 1e-4
    assert adapter.defaults({"optimizer": "optax.adadelta", "mode": "eager"})["learning_rate"] is None
    assert adapter.defaults({"optimizer": "optax.sgd", "mode": "eager"})["momentum"] is None
    assert adapter.defaults({"optimizer": "optax.nadam", "mode": "eager"})["nesterov"] is True  # a functools.partial
    for name in ("optax.sgd", "optax.rmsprop", "optax.adagrad", "optax.adadelta", "optax.adamw", "optax.amsgrad"):
        sig = inspect.signature(adapter._factory({"optimizer": name}))
        got = adapter.defaults({"optimizer": name, "mode": "eager"})
        for arg, param in sig.parameters.items():
            if param.default is param.empty:
                assert got[arg] == "<required>"
            elif isinstance(param.default, (bool, int, float, str, type(None))):
                assert got[arg] == param.default


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_eager_and_jit_agree(dtype):
    req = _request(dtype=dtype, lr_schedule=[0.1, 0.05, 0.2, 0.07, 0.13], steps=5)
    eager = adapter.run(dict(req, mode="eager"))
    jit = adapter.run(dict(req, mode="jit"))
    assert eager["params"].shape == jit["params"].shape == (5, 3, 4)
    assert set(eager["state"]) == set(jit["state"]) == {"mu", "nu"}
    # XLA may fuse the compiled step differently from op-by-op dispatch: a few ulps at most.
    tol = 4 * float(ml_dtypes.finfo(NP_DTYPES[dtype]).eps)
    for a, b in [(eager["params"], jit["params"])] + [(eager["state"][k], jit["state"][k]) for k in ("mu", "nu")]:
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_matches_a_plain_optax_loop(mode):
    args = {"learning_rate": 0.02, "decay": 0.85, "eps": 1e-3, "centered": True, "momentum": 0.7}
    req = _request("optax.rmsprop", args, mode=mode, dtype="float64", state=("nu", "mu", "trace"), steps=7)
    got = adapter.run(req)
    want, state = _optax_loop("optax.rmsprop", args, req["params"], req["grads"], "float64")
    np.testing.assert_allclose(got["params"], want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(got["state"]["trace"][-1], np.asarray(state[2].trace), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(got["state"]["mu"][-1], np.asarray(state[0].mu), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_lr_schedule_is_honoured(mode):
    schedule = [0.1, 0.0, 0.3, 0.25]
    grads = np.array([[1.0, -2.0], [4.0, 8.0], [0.5, 0.25], [1.0, 1.0]])
    req = _request("optax.sgd", {"learning_rate": 0.5}, mode=mode, dtype="float64", params=np.array([1.0, 2.0]),
                   grads=grads, lr_schedule=schedule, state=())
    p = adapter.run(req)["params"]
    expect = np.array([1.0, 2.0]) - np.cumsum(np.array(schedule)[:, None] * grads, axis=0)
    np.testing.assert_allclose(p, expect, rtol=0, atol=1e-15)
    # ... and without a schedule the constant lr is used
    q = adapter.run(dict(req, lr_schedule=None))["params"]
    np.testing.assert_allclose(q, np.array([1.0, 2.0]) - 0.5 * np.cumsum(grads, axis=0), rtol=0, atol=1e-15)


def test_lr_schedule_under_momentum_matches_inject_hyperparams():
    """Setting state.hyperparams['learning_rate'] per step (optax.inject_hyperparams) gives
    the same trajectory as the adapter's schedule (rmsprop: lr sits before the trace)."""
    schedule = [0.1, 0.05, 0.2, 0.07, 0.13, 0.01]
    args = {"learning_rate": 0.0, "decay": 0.9, "eps": 1e-8, "momentum": 0.8}
    req = _request("optax.rmsprop", args, mode="jit", dtype="float64", lr_schedule=schedule, state=(), steps=6)
    got = adapter.run(req)["params"]
    tx = optax.inject_hyperparams(optax.rmsprop)(**args)
    p = jnp.asarray(req["params"])
    state = tx.init(p)
    want = []
    for lr, g in zip(schedule, req["grads"]):
        state.hyperparams["learning_rate"] = jnp.asarray(lr)
        updates, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
        want.append(np.asarray(p))
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-13, atol=1e-15)


def test_jit_compiles_once_per_shape_dtype_and_step_bucket():
    base = _request(mode="jit", dtype="float32", shape=(5, 7), steps=6, seed=1)
    adapter.run(base)
    before = adapter.cache_info()["compilations"]
    # other hyperparameter values, another lr schedule, other data, another step count in the bucket
    other = _request("optax.adam", {"learning_rate": 0.3, "b1": 0.5, "b2": 0.9, "eps": 1e-3, "eps_root": 0.0}, mode="jit",
                     dtype="float32", shape=(5, 7), steps=7, seed=2, lr_schedule=[0.1] * 7)
    adapter.run(other)
    adapter.run(dict(other, lr_schedule=None))
    assert adapter.cache_info()["compilations"] == before
    # a new shape, a new dtype or a new static argument compiles once more each
    adapter.run(_request(mode="jit", dtype="float32", shape=(4, 7), steps=6))
    assert adapter.cache_info()["compilations"] == before + 1
    adapter.run(_request(mode="jit", dtype="float64", shape=(5, 7), steps=6))
    assert adapter.cache_info()["compilations"] == before + 2
    nesterov = dict(base, args=dict(base["args"], nesterov=True))
    adapter.run(nesterov)
    adapter.run(dict(nesterov, args=dict(nesterov["args"], b1=0.3)))
    assert adapter.cache_info()["compilations"] == before + 3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_jit_step_by_step_path_agrees(monkeypatch, dtype):
    """Parameters above SCAN_MAX_ELEMENTS run one compiled step per call (no scan): same results,
    schedule honoured, one compilation whatever the step count."""
    req = _request(dtype=dtype, lr_schedule=[0.1, 0.05, 0.2, 0.07, 0.13], steps=5, mode="jit")
    scan = adapter.run(req)
    monkeypatch.setattr(adapter, "SCAN_MAX_ELEMENTS", 0)
    step = adapter.run(req)
    tol = 4 * float(ml_dtypes.finfo(NP_DTYPES[dtype]).eps)
    for a, b in [(scan["params"], step["params"])] + [(scan["state"][k], step["state"][k]) for k in ("mu", "nu")]:
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())
    before = adapter.cache_info()["compilations"]
    adapter.run(_request("optax.adam", {"learning_rate": 0.3, "b1": 0.5, "b2": 0.9, "eps": 1e-3, "eps_root": 0.0}, dtype=dtype,
                         steps=9, seed=4, mode="jit"))
    assert adapter.cache_info()["compilations"] == before
    sgd = _request("optax.sgd", {"learning_rate": 0.5}, mode="jit", dtype="float64", params=np.array([1.0, 2.0]),
                   grads=np.array([[1.0, -2.0], [4.0, 8.0], [0.5, 0.25]]), lr_schedule=[0.1, 0.0, 0.3], state=())
    expect = np.array([1.0, 2.0]) - np.cumsum(np.array([0.1, 0.0, 0.3])[:, None] * sgd["grads"], axis=0)
    np.testing.assert_allclose(adapter.run(sgd)["params"], expect, rtol=0, atol=1e-15)


def test_jit_padding_does_not_change_results():
    assert [adapter._bucket(n) for n in (1, 20, 32, 33, 64, 65)] == [32, 32, 32, 64, 64, 128]
    from conformance.adapters import jax_script  # (the reproducer pads as the run does)

    assert jax_script.STEP_BUCKET == adapter.STEP_BUCKET
    for steps in (1, 3, 4, 5, 33):
        req = _request(mode="jit", dtype="float64", steps=steps, seed=steps)
        got = adapter.run(req)
        assert got["params"].shape == (steps, 3, 4)
        eager = adapter.run(dict(req, mode="eager"))
        np.testing.assert_allclose(got["params"], eager["params"], rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_low_precision_computes_in_its_own_dtype(mode, dtype):
    req = _request(mode=mode, dtype=dtype, steps=4)
    got = adapter.run(req)
    for a in [got["params"], *got["state"].values()]:
        np.testing.assert_array_equal(_rounded(a, dtype), a)  # representable: never promoted to float64
    want, _ = _optax_loop("optax.adam", req["args"], req["params"], req["grads"], dtype)
    assert not np.array_equal(_rounded(want, dtype), adapter.run(dict(req, dtype="float64"))["params"])


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_hyperparameters_are_weakly_typed(mode):
    """Python-float hyperparameters meet bfloat16 arrays rounded to bfloat16 (momentum
    0.99 acts as 0.98828125), while arithmetic among them stays in float64 (adam's
    1 - b1 = 0.01 is rounded once, not computed from the rounded b1): the spec's
    hyperparameter_dtype tensor."""
    req = _request("optax.sgd", {"learning_rate": 1.0, "momentum": 0.99, "nesterov": False}, mode=mode,
                   dtype="bfloat16", params=np.zeros(2), grads=np.array([[1.0, 1.0], [0.0, 0.0]]), state=("trace",))
    trace = adapter.run(req)["state"]["trace"]
    assert trace[1, 0] == float(ml_dtypes.bfloat16(0.99)) == 0.98828125
    req = _request(args={"learning_rate": 1.0, "b1": 0.99, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}, mode=mode,
                   dtype="bfloat16", params=np.zeros(2), grads=np.ones((1, 2)))
    mu = adapter.run(req)["state"]["mu"]
    assert mu[0, 0] == float(ml_dtypes.bfloat16(1 - 0.99))  # 0.010009765625, not 1 - 0.98828125


def test_float64_cases_compute_in_float64():
    req = _request(dtype="float64", steps=3)
    want, _ = _optax_loop("optax.adam", req["args"], req["params"], req["grads"], "float64")
    for mode in ("eager", "jit"):
        got = adapter.run(dict(req, mode=mode))["params"]
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-16)
        assert not np.array_equal(_rounded(got, "float32"), got)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_state_slots_by_field_name(mode):
    req = _request("optax.rmsprop", {"learning_rate": 0.01, "decay": 0.9, "eps": 1e-8, "centered": False, "momentum": 0.5},
                   mode=mode, state=("nu", "mu", "trace"))
    got = adapter.run(req)
    assert set(got["state"]) == {"nu", "trace"}  # not centered: no mu in the state
    assert adapter.run(dict(req, args=dict(req["args"], centered=True)))["state"].keys() == {"nu", "mu", "trace"}
    got = adapter.run(_request("optax.adadelta", {"learning_rate": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
                               mode=mode, state=("e_g", "e_x")))
    assert set(got["state"]) == {"e_g", "e_x"} and got["state"]["e_x"].shape == (5, 3, 4)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_scalar_parameter(mode):
    got = adapter.run(_request(mode=mode, params=np.float64(0.5), grads=np.array([1.0, -1.0, 2.0]), dtype="float64"))
    assert got["params"].shape == (3,) and got["state"]["mu"].shape == (3,)


def test_inputs_are_not_modified():
    req = _request(mode="jit", dtype="float64")
    params, grads = req["params"].copy(), req["grads"].copy()
    adapter.run(req)
    adapter.run(dict(req, mode="eager"))
    np.testing.assert_array_equal(req["params"], params)
    np.testing.assert_array_equal(req["grads"], grads)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"optimizer": "torch.optim.Adam"}, "not an optax optimizer"),
        ({"optimizer": "optax.no_such_alias"}, "has no optax.no_such_alias"),
        ({"sparse_rows": [[0], [1], [0], [2], [1]]}, "no sparse gradient type"),
        ({"dtype": "int8"}, "no dtype"),
        ({"args": {"learning_rate": 0.1, "amsgrad": True}}, "refused"),
        ({"device": "tpu"}, "unknown jax device"),
    ],
)
def test_unsupported_requests_raise_not_implemented(change, match):
    with pytest.raises(NotImplementedError, match=match):
        adapter.run(dict(_request(), **change))


def test_absent_gpu_is_a_skip():
    if adapter.describe()["devices"]["gpu"]["available"]:
        pytest.skip("a GPU is present")
    with pytest.raises(NotImplementedError, match="GPU"):
        adapter.run(dict(_request(), device="gpu"))


@pytest.mark.parametrize(
    "rule, hyperparameters, variants, sign",
    [
        ("sgd", {"lr": 0.01, "momentum": 0.9, "nesterov": True}, (), 1.0),
        ("rmsprop", {"lr": 0.01, "rho": 0.9, "eps": 1e-3, "momentum": 0.7, "centered": True},
         ("eps_inside_sqrt", "velocity_momentum"), -1.0),
    ],
)
def test_unmapped_trace_is_the_canonical_buffer_when_momentum_is_on(catalog, rule, hyperparameters, variants, sign):
    """The specs leave optax's `trace` unmapped because momentum=0.0 (what canonical momentum 0
    maps to; None cannot be expressed) still keeps a trace while the canonical buffer stays 0.
    With momentum > 0 and a per-step lr it is the canonical b (sgd) and -b (rmsprop)."""
    from conformance.case import Case
    from conformance.kernel import run_case
    from conformance.judging import build_request

    spec = next(s for s in catalog if s.rule == rule)
    rng = np.random.default_rng(3)
    case = Case(rule=rule, framework="jax", mode="jit", device="cpu", dtype="float64", hyperparameters=hyperparameters,
                params=rng.standard_normal(5), grads=rng.standard_normal((6, 5)),
                lr_schedule=list(rng.uniform(0.001, 0.1, 6)))
    request = build_request(spec, spec.mode("jax", "jit"), case).wire()
    request["state"] = list(request["state"]) + ["trace"]
    got = adapter.run(request)
    ref = run_case(spec, case, variants)
    np.testing.assert_allclose(got["params"], ref.params, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(sign * got["state"]["trace"], ref.state["b"], rtol=1e-13, atol=1e-15)


def _cache_hits() -> list[str]:
    hits: list[str] = []
    jax.monitoring.register_event_listener(lambda event, **_: hits.append(event) if event.endswith("cache_hits") else None)
    return hits


def test_a_computation_built_anew_per_call_compiles_once_and_computes_the_same():
    """optax's Muon builds its Newton-Schulz iteration anew on every eager
    update; the adapter's compilation cache (keyed by the compiled module)
    serves the repeats, and the trajectory is the one computed without it."""
    assert adapter.COMPILATION_CACHE is not None and jax.config.jax_compilation_cache_dir == adapter.COMPILATION_CACHE
    request = _request("optax.contrib.muon", {"learning_rate": 0.02, "beta": 0.95}, state=(), shape=(4, 3), steps=3, seed=5)
    hits = _cache_hits()
    cached = adapter.run(request)
    assert hits, "the repeated Newton-Schulz steps were compiled again"
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        request = dict(request, params=request["params"] + 0.0)  # (a new array: nothing remembered by identity)
        fresh = adapter.run(request)
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
    np.testing.assert_array_equal(cached["params"], fresh["params"])


def test_a_users_own_compilation_cache_is_kept(tmp_path):
    import subprocess
    import sys

    code = "from conformance.adapters import jax as a; import jax; print(a.COMPILATION_CACHE, jax.config.jax_compilation_cache_dir)"
    env = dict(__import__("os").environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["None", str(tmp_path)]


def test_the_caches_of_killed_workers_are_removed():
    import os
    import subprocess
    import sys
    import tempfile

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    orphan = tempfile.mkdtemp(prefix=f"{adapter._CACHE_PREFIX}{ended.stdout.strip()}-")
    (Path(orphan) / "entry").write_bytes(b"x")
    adapter._remove_orphaned_caches()
    assert not os.path.exists(orphan)
    assert os.path.isdir(adapter.COMPILATION_CACHE)  # (this process's own stays)
