"""Time per optimizer step through the JAX adapter, as a ratio to a raw optax loop.

For each adapter mode (eager, jit) and size (1e3, 1e6 float32 elements), the
same Adam steps run twice in this process:

- raw, the way a user writes it: `tx = optax.adam(1e-3)`, then per step
  `updates, state = tx.update(g, state, p); p = optax.apply_updates(p, updates)`,
  called op by op (eager) or as one `jax.jit`-compiled step function called
  from a Python loop (jit);
- through `adapters/jax.py` `run` in-process, which also keeps the parameters
  and every state slot after each step (as the comparison needs) and returns
  them as float64 numpy arrays; its jit mode runs all steps in one compiled
  `lax.scan`.

Compilation is excluded from both (one warm-up run each; the adapter's jit
cache then holds the executable). Prints the ratio (target: 1.2x or less),
and the ratio to a raw loop that also hands back what the adapter must (the
parameters and both moments after every step as float64 numpy arrays): for
large parameters under jit that copy-out, not the optimizer, is the cost.
Then, with `--ci`, the wall time of the `ci` profile for all rules on jax
(CPU) through `conformance run`.

Run it with an interpreter that has jax and optax:

    /path/to/jax-env/bin/python benchmarks/jax_modes.py [--ci]
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:  # installed (the wheel places the adapter in the package)
    from conformance.adapters import jax as adapter
except ImportError:  # a checkout run by an interpreter without the harness
    _spec = importlib.util.spec_from_file_location("jax_adapter", Path(__file__).resolve().parents[1] / "adapters" / "jax.py")
    adapter = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(adapter)

import jax  # noqa: E402  (the adapter has switched x64 on, as a user running float64 would)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

STEPS = 20
REPEATS = 5


def raw(mode: str, params: np.ndarray, grads: np.ndarray, keep: bool = False) -> float:
    """The user's loop; with `keep`, it also hands back what the adapter must: the
    parameters and both moments after every step, as float64 numpy arrays."""
    tx = optax.adam(1e-3)
    p0 = jnp.asarray(params, dtype=jnp.float32)
    g = jnp.asarray(grads, dtype=jnp.float32)

    def step(p, state, gi):
        updates, state = tx.update(gi, state, p)
        return optax.apply_updates(p, updates), state

    if mode == "jit":
        step = jax.jit(step)
    gs = [g[i] for i in range(STEPS)]  # sliced beforehand, as a data loader would hand them over
    best = float("inf")
    for _ in range(REPEATS + 1):  # the first run compiles
        p, state = p0, tx.init(p0)
        jax.block_until_ready((p, state))
        t0 = time.perf_counter()
        kept = []
        for i in range(STEPS):
            p, state = step(p, state, gs[i])
            if keep:
                kept.append((p, state[0].mu, state[0].nu))
        jax.block_until_ready((p, state))
        if keep:
            for k in range(3):
                out = np.empty((STEPS, p.size))
                for i, arrays in enumerate(kept):
                    out[i] = np.asarray(arrays[k])
        best = min(best, time.perf_counter() - t0)
    return best / STEPS


def through_adapter(mode: str, params: np.ndarray, grads: np.ndarray) -> float:
    request = {
        "optimizer": "optax.adam", "args": {"learning_rate": 1e-3}, "mode": mode, "device": "cpu",
        "dtype": "float32", "params": params, "grads": grads, "lr_arg": "learning_rate", "lr_schedule": None,
        "state": ["mu", "nu"], "sparse_rows": None,
    }
    best = float("inf")
    for _ in range(REPEATS + 1):  # the first run compiles (jit) or warms jax's op caches (eager)
        t0 = time.perf_counter()
        adapter.run(request)
        best = min(best, time.perf_counter() - t0)
    return best / STEPS


def ci_profile() -> None:
    root = Path(__file__).resolve().parents[1]
    if importlib.util.find_spec("conformance") is not None:
        cmd = [sys.executable, "-m", "conformance", "run"]
    else:  # the harness lives in the project's venv; jax runs in a worker under this interpreter
        harness = root / ".venv" / "bin" / "python"
        if not harness.is_file():
            print("ci profile: skipped (no conformance package here and no .venv/bin/python)")
            return
        cmd = [str(harness), "-m", "conformance", "run", "--python", f"jax={sys.executable}"]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        done = subprocess.run(
            cmd + ["--frameworks", "jax", "--devices", "cpu", "--profile", "ci", "--out", out, "--no-progress"],
            capture_output=True, text=True, cwd=root,
        )
        print(f"ci profile, all rules on jax (cpu): {time.perf_counter() - t0:.1f} s wall (exit {done.returncode})")


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__}, optax {optax.__version__}, Adam float32, {STEPS} steps, best of {REPEATS}, {jax.devices()[0].platform}")
    for n in (1_000, 1_000_000):
        params = rng.standard_normal(n)
        grads = rng.standard_normal((STEPS, n))
        for mode in ("eager", "jit"):
            r = raw(mode, params, grads)
            k = raw(mode, params, grads, keep=True)
            a = through_adapter(mode, params, grads)
            print(
                f"  {mode:<6} n={n:>9,}: raw {r * 1e6:9.1f} us/step, adapter {a * 1e6:9.1f} us/step, ratio {a / r:5.2f}x"
                f"   (raw keeping p, mu, nu per step as float64: {k * 1e6:9.1f} us/step, ratio {a / k:5.2f}x)"
            )
    info = adapter.cache_info()
    print(f"  adapter jit cache: {info['cached']} executable(s), {info['compilations']} compilation(s)")
    if "--ci" in sys.argv[1:]:
        ci_profile()


if __name__ == "__main__":
    main()
