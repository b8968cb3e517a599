"""Speed of the reference kernel on Adam, as a ratio to hand-written numpy.

Both sides run the same float64 Adam steps (Algorithm 1) on the same
1e6-element tensors in this one process; the figure that matters is the
ratio (kernel / numpy), not the seconds, since machines are shared and
noisy. Each side is timed several times, interleaved, and the best time is
kept. Target: 1.5x or less.

    python benchmarks/kernel_adam.py [--size 1000000] [--steps 10] [--repeat 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from conformance.catalog import load_catalog
from conformance.kernel import run


def numpy_adam(p, grads, lr, b1, b2, eps):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = np.empty((len(grads),) + p.shape)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out[t - 1] = p
    return out


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    p0 = rng.normal(size=args.size)
    grads = rng.normal(size=(args.steps, args.size))
    spec = load_catalog().get("adam")
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)

    kernel_out = run(spec, hp, p0, grads).params
    numpy_out = numpy_adam(p0, grads, 1e-3, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose(kernel_out, numpy_out, rtol=1e-12)

    kernel_t, numpy_t = [], []
    for _ in range(args.repeat):  # interleave so drift hits both sides
        kernel_t.append(best_of(lambda: run(spec, hp, p0, grads), 1))
        numpy_t.append(best_of(lambda: numpy_adam(p0, grads, 1e-3, 0.9, 0.999, 1e-8), 1))
    k, n = min(kernel_t), min(numpy_t)
    per_step = lambda s: s / args.steps * 1e3  # noqa: E731
    print(f"Adam, float64, {args.size:.0e} elements, {args.steps} steps, best of {args.repeat}")
    print(f"  kernel      {per_step(k):8.2f} ms/step")
    print(f"  numpy       {per_step(n):8.2f} ms/step")
    print(f"  ratio       {k / n:8.2f}x   (target <= 1.5x)")


if __name__ == "__main__":
    main()
