"""Time per optimizer step through the torch adapter, as a ratio to a raw torch loop.

For each torch mode (forloop, foreach, fused) and size (1e3, 1e6 float32
elements), the same Adam steps run twice in this process: once as a raw
loop (`p.grad = g; opt.step()`), once through `conformance.adapters.torch.run`
in-process (which also copies the parameters and every state slot after
each step, as the comparison needs). Prints the ratio (target: 1.2x or
less). Then the wall time of the default `ci` profile for all six rules on
torch (CPU), through `conformance run`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from conformance.adapters import torch as adapter

STEPS = 20


def raw(mode: str, params: np.ndarray, grads: np.ndarray) -> float:
    flags = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[mode]
    p = torch.nn.Parameter(torch.tensor(params, dtype=torch.float32))
    g = torch.tensor(grads, dtype=torch.float32)
    opt = torch.optim.Adam([p], lr=1e-3, **flags)
    t0 = time.perf_counter()
    for i in range(STEPS):
        p.grad = g[i].clone()
        opt.step()
    return (time.perf_counter() - t0) / STEPS


def through_adapter(mode: str, params: np.ndarray, grads: np.ndarray) -> float:
    request = {
        "optimizer": "torch.optim.Adam", "args": {"lr": 1e-3}, "mode": mode, "device": "cpu", "dtype": "float32",
        "params": params, "grads": grads, "lr_arg": "lr", "lr_schedule": None,
        "state": ["exp_avg", "exp_avg_sq"], "sparse_rows": None,
    }
    t0 = time.perf_counter()
    adapter.run(request)
    return (time.perf_counter() - t0) / STEPS


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, Adam float32, {STEPS} steps, best of 5")
    for n in (1_000, 1_000_000):
        params = rng.standard_normal(n)
        grads = rng.standard_normal((STEPS, n))
        for mode in ("forloop", "foreach", "fused"):
            r = min(raw(mode, params, grads) for _ in range(5))
            a = min(through_adapter(mode, params, grads) for _ in range(5))
            print(f"  {mode:<8} n={n:>9,}: raw {r * 1e6:9.1f} us/step, adapter {a * 1e6:9.1f} us/step, ratio {a / r:5.2f}x")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "conformance", "run", "--frameworks", "torch", "--devices", "cpu", "--profile", "ci",
             "--out", out, "--no-progress"], capture_output=True, text=True,
        )
        print(f"ci profile, all rules on torch (cpu), one process: {time.perf_counter() - t0:.1f} s wall (exit {done.returncode})")


if __name__ == "__main__":
    main()
