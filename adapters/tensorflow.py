"""TensorFlow adapter: Keras 3 optimizers on the TensorFlow backend, and the
legacy TF1 optimizers (`tf.compat.v1.train.*`) that users still port from.

It knows TensorFlow and Keras, nothing about update rules: the optimizer,
its native arguments and the slots to read come in the request (the spec's
mapping). The modes name how the update is executed:

- `eager`: `optimizer.apply_gradients` called eagerly, op by op;
- `function`: the same call inside `tf.function` (graph mode, Grappler);
- `xla`: inside `tf.function(jit_compile=True)` (XLA-compiled);
- `v1`: the spec's `tf.compat.v1.train` optimizer, run eagerly (its
  `apply_gradients` uses the same fused training ops, e.g. ResourceApplyAdam,
  as a TF1 graph would);
- `legacy`: Keras 2's `keras.optimizers.legacy` (OptimizerV2) classes, run
  eagerly: TensorFlow 2.15 and older. Keras 3 has none ("not supported in
  Keras 3"), so there the mode is a skip with Keras' own reason;
  `legacy_plain` runs the same way: a spec names it where a legacy
  optimizer takes another code path (RMSprop without momentum).

The learning rate is a float32 Keras variable (TF1: a float32 tensor), set
per step when the case has a schedule, so graphs are not retraced for it.
A tf.function is traced once per case (the optimizer's Python-float
hyperparameters are constants in its graph).

Sparse gradients go in as `tf.IndexedSlices` (what `tf.gather` and embedding
lookups produce); duplicate row indices are passed through as they are.

Keras 2 (the `keras` of TensorFlow 2.15 and older, for a version pair run
through a worker of that TensorFlow) takes the same requests: its
`keras.optimizers` classes run on a `tf.Variable`, and its slots are read
by their Keras 2 names.

This module runs in-process or as a worker (conformance/worker.py loads it by
path), so it imports only the standard library, numpy, tensorflow and keras.
`NotImplementedError` means "this framework cannot run this" (a skip with
the reason); any other exception is a crash.
"""

from __future__ import annotations

import inspect
import math
import os
import platform
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import keras

FRAMEWORK = "tensorflow"
DEVICES = ("cpu", "gpu")
MODES = ("eager", "function", "xla", "v1", "legacy", "legacy_plain")
_DTYPES = {"float16": tf.float16, "bfloat16": tf.bfloat16, "float32": tf.float32, "float64": tf.float64}
_VAR = "p"  # the parameter's name; Keras names its slots "<name>_<slot>"
#: Keras 3 (TensorFlow >= 2.16); Keras 2 (an older TensorFlow, for version pairs) has no keras.Variable
KERAS3 = hasattr(keras, "Variable")


def describe() -> dict[str, Any]:
    gpus = tf.config.list_physical_devices("GPU")
    gpu_name = None
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        gpu_name = details.get("device_name", gpus[0].name)
    return {
        "framework": FRAMEWORK,
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "cuda": tf.sysconfig.get_build_info().get("cuda_version"),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "devices": {
            "cpu": {"available": True, "name": platform.processor() or platform.machine()},
            "gpu": {
                "available": bool(gpus),
                "name": gpu_name,
                "reason": None if gpus else "TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty)",
            },
        },
    }


def _resolve(request: dict[str, Any]):
    """`keras.optimizers.Adam` or `tf.compat.v1.train.AdamOptimizer` to the
    class; a user's optimizer class, imported by the worker (`optimizer_object`,
    conformance/worker.py)."""
    name = request["optimizer"]
    given = request.get("optimizer_object")
    if given is not None:
        if not isinstance(given, type):
            raise TypeError(f"{name} is not an optimizer class (it is {given!r})")
        return given
    roots = {"keras": keras, "tf": tf, "tensorflow": tf}
    head, _, rest = name.partition(".")
    obj: Any = roots.get(head)
    if obj is None or not rest:
        raise NotImplementedError(f"{name!r} is neither a keras nor a tf optimizer")
    for part in rest.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise NotImplementedError(f"TensorFlow {tf.__version__} / Keras {keras.__version__} has no {name}")
    return obj


def _no_legacy_in_keras3(name: str) -> None:
    if KERAS3 and name.startswith("keras.optimizers.legacy."):
        # (Keras 3 keeps stubs of some of them that raise ImportError when built)
        raise NotImplementedError(
            f"{name}: `keras.optimizers.legacy` is not supported in Keras 3 (Keras {keras.__version__});"
            " it is Keras 2's, in TensorFlow 2.15 and older (or the tf_keras package)"
        )


def defaults(request: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's own default arguments, read from its constructor's signature."""
    _no_legacy_in_keras3(request["optimizer"])
    cls = _resolve(request)
    out: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[name] = "<required>" if param.default is param.empty else _plain(param.default)
    return out


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return repr(value)


def _device(name: str) -> str:
    if name == "cpu":
        return "/CPU:0"
    if name == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise NotImplementedError("TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty)")
        return "/GPU:0"
    raise NotImplementedError(f"unknown TensorFlow device {name!r} (known: {', '.join(DEVICES)})")


def _gradient(g: tf.Tensor, rows: Any, shape: tuple[int, ...], values: Any = None):
    """The step's gradient: dense, or tf.IndexedSlices (what tf.gather and
    embedding lookups produce) listing `rows` in the given order, a row
    listed twice with one slice each (`values`)."""
    if rows is None:
        return g
    index = tf.constant(list(rows), dtype=tf.int64)
    if values is None:
        sliced = tf.gather(g, index)
    else:
        sliced = tf.cast(tf.constant(np.asarray(values, dtype=np.float64).reshape((len(rows),) + tuple(shape[1:]))), g.dtype)
    return tf.IndexedSlices(sliced, index, dense_shape=tf.constant(shape, dtype=tf.int64))


def _step_gradient(request: dict[str, Any], grads: tf.Tensor, i: int, shape: tuple[int, ...]):
    rows, values = request.get("sparse_rows"), request.get("sparse_values")
    if rows is None:
        return grads[i]
    return _gradient(grads[i], rows[i], shape, values[i] if values is not None else None)


def run(request: dict[str, Any]) -> dict[str, Any]:
    mode = request["mode"]
    if mode not in MODES:
        # a spec's own mode (one that sets its own arguments, e.g. Adafactor's
        # relative_step=False; spec validation refuses any other name) runs eagerly
        mode = "eager"
    dtype = _DTYPES.get(request["dtype"])
    if dtype is None:
        raise NotImplementedError(f"TensorFlow has no dtype {request['dtype']}")
    with tf.device(_device(request["device"])):
        if mode == "v1":
            return _run_v1(request, dtype)
        if mode in ("legacy", "legacy_plain"):
            _no_legacy_in_keras3(request["optimizer"])
            return _run_v1(request, dtype, legacy=True)
        return _run_keras(request, dtype, mode)


def _inputs(request: dict[str, Any], dtype) -> tuple[np.ndarray, tf.Tensor, tuple[int, ...]]:
    params = np.asarray(request["params"], dtype=np.float64)
    grads = tf.cast(tf.constant(np.asarray(request["grads"], dtype=np.float64)), dtype)
    return params, grads, tuple(params.shape)


def _construct(cls, name: str, args: dict[str, Any]):
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        # the constructor validates its arguments: not offered, a skip
        raise NotImplementedError(f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())}) refused: {exc}") from None


def _run_keras(request: dict[str, Any], dtype, mode: str) -> dict[str, Any]:
    cls = _resolve(request)
    params, grads, shape = _inputs(request, dtype)
    opt = _construct(cls, request["optimizer"], dict(request["args"]))
    if KERAS3:
        var = keras.Variable(tf.cast(tf.constant(params), dtype), dtype=dtype.name, name=_VAR, trainable=True)
        opt.build([var])
        slots = {v.name: v for v in opt.variables}
    else:
        # Keras 2 (TensorFlow <= 2.15): a tf.Variable; its optimizers name a
        # slot "<slot>/<var>:0" (keras/optimizers/optimizer.py add_variable_from_reference)
        var = tf.Variable(tf.cast(tf.constant(params), dtype), name=_VAR)
        opt.build([var])
        slots = {}
        for v in opt.variables:
            slot, _, owner = v.name.split(":")[0].rpartition("/")
            if owner == _VAR and slot:
                slots[f"{_VAR}_{slot}"] = v

    def apply(g):
        opt.apply_gradients([(g, var)])

    if mode == "function":
        apply = tf.function(apply, autograph=False, reduce_retracing=True)
    elif mode == "xla":
        apply = tf.function(apply, autograph=False, jit_compile=True, reduce_retracing=True)

    schedule = request.get("lr_schedule")
    wanted = [name for name in request.get("state", ()) if f"{_VAR}_{name}" in slots]
    steps = int(grads.shape[0])
    # Kept in the variable's own dtype (the caller widens them to float64
    # once): a per-step widening on the TensorFlow side costs more than the step.
    native = var.numpy().dtype
    out = np.empty((steps,) + shape, dtype=native)
    state = {name: np.empty((steps,) + shape, dtype=native) for name in wanted}
    for i in range(steps):
        if schedule is not None:
            opt.learning_rate = float(schedule[i])
        apply(_step_gradient(request, grads, i, shape))
        out[i] = _numpy(var)
        for name in wanted:
            state[name][i] = _numpy(slots[f"{_VAR}_{name}"])
    return {"params": out, "state": state}


def _run_v1(request: dict[str, Any], dtype, legacy: bool = False) -> dict[str, Any]:
    """A TF1 optimizer, or (`legacy`) a Keras 2 OptimizerV2: both apply
    gradients to a tf.Variable and keep slots read by `get_slot(var, name)`."""
    cls = _resolve(request)
    params, grads, shape = _inputs(request, dtype)
    var = tf.Variable(tf.cast(tf.constant(params), dtype), name=_VAR)
    args = dict(request["args"])
    schedule = request.get("lr_schedule")
    lr_arg = request.get("lr_arg")
    current = [None]
    if schedule is not None and legacy:
        # OptimizerV2 keeps learning_rate in a float32 variable (_create_hypers);
        # assigning the attribute sets that variable, as a schedule would
        if lr_arg is None:
            raise NotImplementedError("no native argument carries the learning rate")
        args[lr_arg] = float(schedule[0])
    elif schedule is not None:
        if lr_arg is None:
            raise NotImplementedError("no native argument carries the learning rate")
        # TF1 optimizers call a callable learning rate at every apply in eager mode
        args[lr_arg] = lambda: current[0]
        current[0] = float(schedule[0])
    opt = _construct(cls, request["optimizer"], args)
    steps = int(grads.shape[0])
    native = var.numpy().dtype
    out = np.empty((steps,) + shape, dtype=native)
    state: dict[str, np.ndarray] = {}
    for i in range(steps):
        if schedule is not None and legacy:
            setattr(opt, lr_arg, float(schedule[i]))
        elif schedule is not None:
            current[0] = float(schedule[i])
        opt.apply_gradients([(_step_gradient(request, grads, i, shape), var)])
        out[i] = _numpy(var)
        for name in request.get("state", ()):
            try:
                slot = opt.get_slot(var, name)
            except KeyError:  # (Keras 2 OptimizerV2 raises for a slot it did not make, e.g. vhat without amsgrad)
                slot = None
            if slot is None:
                continue
            state.setdefault(name, np.empty((steps,) + shape, dtype=native))[i] = _numpy(slot)
    return {"params": out, "state": state}


def _numpy(v) -> np.ndarray:
    return v.numpy()
