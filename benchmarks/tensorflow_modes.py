"""Time per optimizer step through the TensorFlow adapter, as a ratio to a raw Keras loop.

For each mode (eager, function, xla: Keras 3 Adam; v1: tf.compat.v1 Adam)
and size (1e3, 1e6 float32 elements), the same Adam steps run twice in this
process: as a raw loop (`opt.apply_gradients` on a variable, wrapped in
tf.function / jit_compile for those modes, traced once), and through
`conformance.adapters.tensorflow.run` in-process, which also traces once per
case and copies the parameter and every state slot out after each step, as
the comparison needs. Prints the ratio (target: 1.2x or less); the adapter's
time includes that case's one trace, so at few steps the ratio measures
tracing as much as stepping.

    .venv/bin/python benchmarks/tensorflow_modes.py
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401  (torch before tensorflow in one process)
import keras
import tensorflow as tf

from conformance.adapters import tensorflow as adapter

STEPS = 20


def raw(mode: str, params: np.ndarray, grads: np.ndarray) -> float:
    g = tf.constant(grads, dtype=tf.float32)
    t0 = time.perf_counter()
    if mode == "v1":
        var = tf.Variable(tf.constant(params, dtype=tf.float32))
        opt = tf.compat.v1.train.AdamOptimizer(learning_rate=1e-3)
        for i in range(STEPS):
            opt.apply_gradients([(g[i], var)])
    else:
        var = keras.Variable(params.astype(np.float32), dtype="float32", name="p")
        opt = keras.optimizers.Adam(learning_rate=1e-3)
        opt.build([var])

        def apply(grad):
            opt.apply_gradients([(grad, var)])

        if mode == "function":
            apply = tf.function(apply, autograph=False)
        elif mode == "xla":
            apply = tf.function(apply, autograph=False, jit_compile=True)
        for i in range(STEPS):
            apply(g[i])
    var.numpy()  # wait for the last step
    return (time.perf_counter() - t0) / STEPS


def through_adapter(mode: str, params: np.ndarray, grads: np.ndarray) -> float:
    v1 = mode == "v1"
    request = {
        "optimizer": "tf.compat.v1.train.AdamOptimizer" if v1 else "keras.optimizers.Adam",
        "args": {"learning_rate": 1e-3}, "mode": mode, "device": "cpu", "dtype": "float32",
        "params": params, "grads": grads, "lr_arg": "learning_rate", "lr_schedule": None,
        "state": ["m", "v"] if v1 else ["momentum", "velocity"], "sparse_rows": None,
    }
    t0 = time.perf_counter()
    adapter.run(request)
    return (time.perf_counter() - t0) / STEPS


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, Adam float32, {STEPS} steps, best of 3")
    for n in (1_000, 1_000_000):
        params = rng.standard_normal(n)
        grads = rng.standard_normal((STEPS, n))
        for mode in ("eager", "function", "xla", "v1"):
            r = min(raw(mode, params, grads) for _ in range(3))
            a = min(through_adapter(mode, params, grads) for _ in range(3))
            print(f"  {mode:<8} n={n:>9,}: raw {r * 1e6:9.1f} us/step, adapter {a * 1e6:9.1f} us/step, ratio {a / r:5.2f}x")


if __name__ == "__main__":
    main()
