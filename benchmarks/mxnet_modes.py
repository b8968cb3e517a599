"""Time per optimizer step through the MXNet adapter, as a ratio to a raw MXNet loop.

Run it with MXNet's own interpreter (MXNet 1.9 needs numpy < 1.24):

    /path/to/mxnet-env/bin/python benchmarks/mxnet_modes.py

For each mode (`updater`: float32 weights; `multi_precision`: float16
weights with a float32 master copy) and size (32, 1e3, 1e6 elements), the same
Adam steps run twice in this process: once as a raw loop over
`mx.optimizer.get_updater(opt)(0, grad, weight)` with the gradients already
in NDArrays, once through `adapters/mxnet.py`'s `run` (which also builds
the NDArrays from numpy, copies the parameters and every state slot after
each step, as the comparison needs, and returns them as numpy arrays).
Both wait for MXNet's asynchronous engine to finish. Prints the ratio
(target: 1.2x or less); 32 elements is the largest tensor the ci and dev
profiles draw. The adapter is loaded by path, as the worker does, so the
harness package need not be installed here.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

import mxnet as mx  # noqa: E402

STEPS = 20
REPEATS = 7
ADAPTER = Path(__file__).resolve().parents[1] / "adapters" / "mxnet.py"


def load_adapter():
    spec = importlib.util.spec_from_file_location("mxnet_adapter", ADAPTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw(mode: str, params: np.ndarray, grads: np.ndarray) -> float:
    dtype = np.float16 if mode == "multi_precision" else np.float32
    opt = mx.optimizer.Adam(learning_rate=1e-3, multi_precision=mode == "multi_precision")
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array(params, dtype=dtype)
    g = [mx.nd.array(x, dtype=dtype) for x in grads]
    mx.nd.waitall()
    t0 = time.perf_counter()
    for i in range(STEPS):
        updater(0, g[i], w)
    w.wait_to_read()
    return (time.perf_counter() - t0) / STEPS


def through_adapter(adapter, mode: str, params: np.ndarray, grads: np.ndarray) -> float:
    request = {
        "optimizer": "mxnet.optimizer.Adam", "args": {"learning_rate": 1e-3}, "mode": mode, "device": "cpu",
        "dtype": "float16" if mode == "multi_precision" else "float32",
        "params": params, "grads": grads, "lr_arg": "learning_rate", "lr_schedule": None,
        "state": ["mean", "var"], "sparse_rows": None,
    }
    t0 = time.perf_counter()
    adapter.run(request)
    return (time.perf_counter() - t0) / STEPS


def main() -> None:
    adapter = load_adapter()
    rng = np.random.default_rng(0)
    print(f"mxnet {mx.__version__}, Adam, {STEPS} steps, best of {REPEATS} (interleaved)")
    for n in (32, 1_000, 1_000_000):
        params = rng.standard_normal(n)
        grads = rng.standard_normal((STEPS, n))
        for mode in ("updater", "multi_precision"):
            through_adapter(adapter, mode, params, grads)  # warm up the ops
            # interleaved, so that a busy machine slows both alike
            r = a = float("inf")
            for _ in range(REPEATS):
                r = min(r, raw(mode, params, grads))
                a = min(a, through_adapter(adapter, mode, params, grads))
            print(f"  {mode:<15} n={n:>9,}: raw {r * 1e6:9.1f} us/step, adapter {a * 1e6:9.1f} us/step, ratio {a / r:5.2f}x")


if __name__ == "__main__":
    main()
