"""The MXNet part of a standalone reproducer (conformance/reproducer.py).

Writes, as plain MXNet 1.x code a maintainer can read, what `mxnet.py` does
for one request: build the optimizer with its native arguments (and
`multi_precision=True` for a `multi_precision` / `<name>_multi_precision`
mode), run it through `mx.optimizer.get_updater`, the path of Gluon's
Trainer and the KVStore, with one gradient per step, and collect the weight
after every step. Every other mode (e.g. `nag`, `no_lazy_update`) differs
only in the optimizer or arguments the spec gives it.

A sparse case's gradient is a row_sparse NDArray listing the step's rows
in ascending order, each once (MXNet does not check this, and its non-lazy
kernels misplace slices otherwise; a case that repeats a row cannot be
written). A scalar parameter runs as shape (1,): NDArrays cannot be 0-d.
MXNet has no bfloat16 optimizers. The script must run with MXNet's own
interpreter (MXNet 1.9 needs numpy < 1.24). This module imports no
framework: a report is written anywhere.
"""

from __future__ import annotations

from typing import Any

DTYPES = {"float16": "np.float16", "float32": "np.float32", "float64": "np.float64"}
CONTEXTS = {"cpu": "mx.cpu()", "gpu": "mx.gpu(0)"}


def imports(request: dict[str, Any]) -> list[str]:
    return ["import mxnet as mx"]


def _multi_precision(mode: str) -> bool:
    return mode == "multi_precision" or mode.endswith("_multi_precision")


def _check(request: dict[str, Any]) -> None:
    if request["dtype"] == "bfloat16":
        raise NotImplementedError(
            "mxnet optimizers have no bfloat16 (the update ops' type switch rejects it,"
            " and numpy has no bfloat16 to build the NDArray from)"
        )
    if request["dtype"] not in DTYPES:
        raise NotImplementedError(f"mxnet has no dtype {request['dtype']}")
    if request["device"] not in CONTEXTS:
        raise NotImplementedError(f"unknown mxnet device {request['device']!r} (known: {', '.join(CONTEXTS)})")
    if not request["optimizer"].startswith("mxnet.optimizer.") and not request.get("import"):
        raise NotImplementedError(f"{request['optimizer']!r} is not an mxnet.optimizer optimizer")
    for rows in request.get("sparse_rows") or ():
        if len(set(rows)) != len(rows):
            raise NotImplementedError(
                "an MXNet row_sparse array cannot list a row twice (its indices must be unique and ascending)"
            )


def _args(request: dict[str, Any]) -> str:
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in request["args"].items()}
    if _multi_precision(request["mode"]):
        args["multi_precision"] = True
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def run_source(request: dict[str, Any], name: str = "run") -> str:
    _check(request)
    dtype = DTYPES[request["dtype"]]
    ctx = CONTEXTS[request["device"]]
    optimizer = "mx.optimizer." + request["optimizer"][len("mxnet.optimizer."):]
    scalar = getattr(request["params"], "ndim", None) == 0
    shaped = ".reshape(1)" if scalar else ""  # (an NDArray cannot be 0-d: a scalar runs as shape (1,))
    lines = [
        f"def {name}(params, grads, lrs, rows, values):",
        f"    weight = mx.nd.array(params{shaped}, ctx={ctx}, dtype={dtype})",
        f"    opt = {optimizer}({_args(request)})",
        "    updater = mx.optimizer.get_updater(opt)  # the path of gluon.Trainer and the KVStore",
        "    out = []",
        "    for i in range(steps):",
    ]
    if request.get("lr_schedule") is not None:
        lines.append("        opt.set_learning_rate(float(lrs[i]))")
    if request.get("sparse_rows") is not None:
        lines += [
            "        # a row_sparse gradient: the step's rows in ascending order, each with its slice",
            "        order = np.argsort(rows[i])",
            "        index = np.asarray(rows[i], dtype=np.int64)[order]",
            "        data = values[i].reshape((len(index),) + params.shape[1:])[order]",
            "        grad = mx.nd.sparse.row_sparse_array(",
            f"            (mx.nd.array(data, ctx={ctx}, dtype={dtype}), mx.nd.array(index, ctx={ctx}, dtype=np.int64)),",
            f"            shape=params.shape, ctx={ctx}, dtype={dtype})",
        ]
    else:
        lines.append(f"        grad = mx.nd.array(grads[i]{shaped}, ctx={ctx}, dtype={dtype})")
    lines += [
        "        updater(0, grad, weight)",
        f"        out.append(weight.asnumpy().astype(np.float64){'.reshape(())' if scalar else ''})",
        "    return np.array(out)",
    ]
    return "\n".join(lines) + "\n"
