"""The TensorFlow part of a standalone reproducer (conformance/reproducer.py).

Writes, as plain TensorFlow / Keras code a maintainer can read, what
`tensorflow.py` does for one request: cast the float64 case to the dtype
with `tf.cast`, build the optimizer with its native arguments (a Keras 3
optimizer stepped eagerly, inside `tf.function` or XLA-compiled; or, for
`v1`, a `tf.compat.v1.train` optimizer run eagerly), set a scheduled
learning rate before each step the way the adapter does (the Keras
`learning_rate` property; a TF1 callable learning rate), give it one
gradient per step (a `tf.IndexedSlices` for a sparse case, rows listed as
the case lists them) and collect the parameter after every step. It imports
no framework: a report is written anywhere.
"""

from __future__ import annotations

import math
from typing import Any

#: How each Keras mode wraps the step (as in tensorflow.py `_run_keras`).
KERAS_MODES = {
    "eager": None,
    "function": "@tf.function(autograph=False, reduce_retracing=True)",
    "xla": "@tf.function(autograph=False, jit_compile=True, reduce_retracing=True)",
}
#: `tf.device` of each device name (as in tensorflow.py `_device`).
DEVICES = {"cpu": "/CPU:0", "gpu": "/GPU:0"}


def _optimizer(request: dict[str, Any]) -> str:
    """The optimizer's class as the script spells it (`tf.` or `keras.`)."""
    name = request["optimizer"]
    return "tf." + name[len("tensorflow."):] if name.startswith("tensorflow.") else name


def imports(request: dict[str, Any]) -> list[str]:
    lines = ["import tensorflow as tf"]
    if _optimizer(request).startswith("keras."):
        lines.append("import keras")
    return lines


def _value(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return f"float({str(v)!r})"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_value(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
    return repr(v)


def _args(args: dict[str, Any], overrides: dict[str, str] | None = None) -> str:
    overrides = overrides or {}
    return ", ".join(f"{k}={overrides[k] if k in overrides else _value(v)}" for k, v in args.items())


def _gradient(request: dict[str, Any], dtype: str) -> list[str]:
    """The lines that set `g`, the step's gradient (inside the step loop)."""
    if request.get("sparse_rows") is None:
        return [f"        g = tf.cast(grads[i], {dtype})"]
    return [
        "        # tf.IndexedSlices listing the step's rows (as tf.gather gives them: a repeated row has one slice each)",
        "        index = tf.constant(rows[i], dtype=tf.int64)",
        f"        slices = tf.cast(np.reshape(values[i], (len(rows[i]),) + params.shape[1:]), {dtype})",
        "        g = tf.IndexedSlices(slices, index, dense_shape=tf.constant(params.shape, dtype=tf.int64))",
    ]


def run_source(request: dict[str, Any], name: str = "run") -> str:
    mode = request["mode"]
    if mode != "v1" and mode not in KERAS_MODES:
        raise NotImplementedError(f"unknown TensorFlow mode {mode!r} (known: {', '.join([*KERAS_MODES, 'v1'])})")
    device = DEVICES.get(request["device"])
    if device is None:
        raise NotImplementedError(f"unknown TensorFlow device {request['device']!r} (known: {', '.join(DEVICES)})")
    dtype = f"tf.{request['dtype']}"
    scheduled = request.get("lr_schedule") is not None
    lines = [f"def {name}(params, grads, lrs, rows, values):", f"    with tf.device({device!r}):"]
    body: list[str] = []
    if mode == "v1":
        body.append(f"p = tf.Variable(tf.cast(params, {dtype}), name='p')")
        overrides = {}
        if scheduled:
            if request.get("lr_arg") is None:
                raise NotImplementedError("no native argument carries the learning rate")
            overrides[request["lr_arg"]] = "lambda: float(lrs[i])"
            body.append("# a TF1 optimizer calls a callable learning rate at every apply (eager): this one reads step i's")
        body.append(f"opt = {_optimizer(request)}({_args(request['args'], overrides)})")
        apply = "opt.apply_gradients([(g, p)])"
    else:
        body += [
            f"p = keras.Variable(tf.cast(params, {dtype}), dtype={request['dtype']!r}, name='p', trainable=True)",
            f"opt = {_optimizer(request)}({_args(request['args'])})",
            "opt.build([p])",
        ]
        if KERAS_MODES[mode] is None:
            apply = "opt.apply_gradients([(g, p)])"
        else:
            body += ["", KERAS_MODES[mode], "def apply(g):", "    opt.apply_gradients([(g, p)])", ""]
            apply = "apply(g)"
    body += ["out = []", "for i in range(steps):"]
    lines += [f"        {line}" if line else "" for line in body]
    if scheduled and mode != "v1":
        lines.append("            opt.learning_rate = float(lrs[i])")
    lines += ["    " + line for line in _gradient(request, dtype)]
    lines += [
        f"            {apply}",
        "            out.append(p.numpy().astype(np.float64))",
        "    return np.array(out)",
    ]
    return "\n".join(lines) + "\n"
