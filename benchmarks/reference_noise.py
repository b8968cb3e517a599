"""Cost of judging one case: the reference and its noise estimate, as a ratio
to one plain float64 kernel pass over the same case.

Every executed case is judged against `conformance.compare.reference`: one
exact run (long double) plus the rounded runs of the noise estimate (six
samples of the rounding model, batched into one kernel pass with a sample
axis). The figure that matters is the ratio to a plain float64 kernel pass
in the same process (machines are shared and noisy); each side is timed
several times, interleaved, and the best time is kept. Target: 3x or less.

The cases are the shapes a run draws (20 steps, up to 32 elements): Adam,
centered RMSprop with momentum, SGD with Nesterov momentum, and Adagrad with
sparse gradients that list a row twice; in float32 and bfloat16.

    python benchmarks/reference_noise.py [--repeat 7] [--serial]

`--serial` also times the six rounded runs one after another (the model
before batching), for the ratio between the two.
"""

from __future__ import annotations

import argparse

import numpy as np

from conformance.case import Case
from conformance.catalog import load_catalog
from conformance.tolerance import reference, tolerance_for
from conformance.dtypes import round_to
from conformance.kernel import run_case
from kernel_adam import best_of  # (this folder: the same best-of-N timer)


def cases() -> list[tuple[str, Case]]:
    rng = np.random.default_rng(0)
    out = []
    for dtype in ("float32", "bfloat16"):
        def dense(rule, hp, shape=(4, 8), steps=20):
            return Case(rule=rule, dtype=dtype, params=round_to(rng.normal(size=shape), dtype),
                        grads=round_to(rng.normal(size=(steps,) + shape), dtype), hyperparameters=hp)

        out.append((f"adam {dtype}", dense("adam", {"lr": 1e-2, "weight_decay": 0.01})))
        out.append((f"rmsprop centered {dtype}", dense("rmsprop", {"lr": 1e-2, "momentum": 0.5, "centered": True})))
        out.append((f"sgd nesterov {dtype}", dense("sgd", {"lr": 1e-2, "momentum": 0.9, "nesterov": True})))
        rows = [(0, 2, 2), (1,), (), (0, 1, 2, 3)] * 5
        values = tuple(round_to(rng.normal(size=(len(r), 8)), dtype) for r in rows)
        grads = np.zeros((20, 4, 8))
        for i, (r, v) in enumerate(zip(rows, values)):
            for row, slice_ in zip(r, v):
                grads[i, row] += slice_
        sparse = Case(rule="adagrad", dtype=dtype, params=round_to(rng.normal(size=(4, 8)), dtype), grads=round_to(grads, dtype),
                      hyperparameters={"lr": 1e-2}, sparse_rows=tuple(rows), sparse_values=values)
        out.append((f"adagrad sparse {dtype}", sparse))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--serial", action="store_true", help="also time the rounded runs one after another")
    args = parser.parse_args()
    catalog = load_catalog()
    print(f"{'case':<26} {'plain ms':>9} {'reference ms':>13} {'ratio':>6}" + (f" {'serial ms':>10} {'serial/batched':>15}" if args.serial else ""))
    ratios = []
    for name, case in cases():
        spec = catalog.get(case.rule)
        tol = tolerance_for(spec, case.dtype)
        plain = best_of(lambda: run_case(spec, case, (), compute_dtype="float64"), args.repeat)
        ref = best_of(lambda: reference(spec, case, (), tol), args.repeat)
        ratios.append(ref / plain)
        line = f"{name:<26} {plain * 1e3:>9.2f} {ref * 1e3:>13.2f} {ref / plain:>6.2f}"
        if args.serial:
            serial = best_of(lambda: reference(spec, case, (), tol, batched=False), args.repeat)
            line += f" {serial * 1e3:>10.2f} {serial / ref:>15.2f}"
        print(line)
    print(f"geometric mean ratio reference / plain float64 pass: {float(np.exp(np.mean(np.log(ratios)))):.2f} (target 3x or less)")


if __name__ == "__main__":
    main()
