"""MXNet adapter: runs a case through MXNet 1.x's own optimizers (mx.optimizer).

It knows MXNet and nothing about update rules: which optimizer to build,
its native arguments and the state slots to read come in the request (the
spec's mapping). It knows how MXNet runs an optimizer, which is what the
modes name:

- `updater`: the path Gluon's Trainer and the KVStore take,
  `mx.optimizer.get_updater(opt)(index, grad, weight)`
  (mxnet/optimizer/optimizer.py Updater.__call__): the state comes from
  `create_state_multi_precision`, and the update runs through
  `update_multi_precision`, i.e. the fused update ops (`adam_update`,
  `rmsprop_update`, `multi_sgd_mom_update` for SGD's aggregated dense
  path, ...) or, for AdaGrad and AdaDelta, NDArray arithmetic in Python;
- `multi_precision`: the same with `multi_precision=True`: a float16 weight
  gets a float32 master copy, the update runs in float32 on that copy (SGD
  and NAG: the `mp_*` / `multi_mp_*` ops; every other optimizer: the base
  class wrapper `Optimizer.update_multi_precision`) and the float16 weight
  is the master copy cast back. For other dtypes the flag changes nothing.
  A mode named `<name>_multi_precision` does the same;
- any other mode name (e.g. `nag`, which builds mxnet.optimizer.NAG from
  the spec) runs the `updater` path with the spec's optimizer.

MXNet keeps an optimizer's state as an NDArray, a tuple of them, or None,
so this module holds the table of tuple positions -> native slot names
per optimizer class (`_SLOTS`, from each class's `create_state`).

MXNet 1.x NDArrays cannot be 0-d: a scalar parameter runs as shape (1,).
Inputs arrive as float64 already rounded to the case dtype.

This module runs in-process or as a worker (conformance/worker.py loads it
by path, under MXNet's own interpreter: MXNet 1.9 needs numpy < 1.24), so
it imports only the standard library, numpy and mxnet. Requests and
results are plain dicts of numbers, strings and numpy arrays;
`NotImplementedError` means "this framework cannot run this" (a skip with
the reason), any other exception is a crash.
"""

from __future__ import annotations

import inspect
import os
import platform
import warnings
from typing import Any

import numpy as np

# The optimizers print advice through `warnings` and the C++ log (float16
# without multi_precision, lazy_update or a storage fallback with row_sparse
# gradients); none of it changes a result.
warnings.filterwarnings("ignore", module=r"mxnet(\..*)?$")
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")

import mxnet as mx  # noqa: E402
from mxnet.base import MXNetError  # noqa: E402

_VERSION = tuple(int(x) for x in mx.__version__.split(".")[:2] if x.isdigit())

FRAMEWORK = "mxnet"
DEVICES = ("cpu", "gpu")
_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}

#: The native names of the positions of each optimizer's state (what
#: `create_state` returns), per class. A single NDArray (or None) is a
#: one-slot state; a shorter tuple holds the leading slots only (RMSProp
#: keeps (n,) unless centered, then (n, g, delta)). Source:
#: mxnet/optimizer/optimizer.py, each class's create_state.
_SLOTS: dict[str, tuple[str, ...]] = {
    "SGD": ("momentum",),
    "NAG": ("momentum",),
    "Signum": ("momentum",),
    "LARS": ("momentum",),
    "Adam": ("mean", "var"),
    "Adamax": ("mean", "var"),
    "Nadam": ("mean", "var"),
    "LAMB": ("mean", "var"),
    "FTML": ("prev_d", "prev_v", "prev_z"),
    "Ftrl": ("z", "n"),
    "AdaGrad": ("history",),
    "AdaDelta": ("acc_g", "acc_delta"),
    "RMSProp": ("n", "g", "delta"),
}


def describe() -> dict[str, Any]:
    """Versions and devices, for the run header and to skip absent devices."""
    gpus = _num_gpus()
    cuda = _feature("CUDA")
    if gpus:
        gpu = {"available": True, "name": f"gpu(0) of {gpus} (CUDA build)", "reason": None}
    elif not cuda:
        gpu = {
            "available": False,
            "name": None,
            "reason": f"this mxnet {mx.__version__} build has no CUDA support (mx.runtime.Features: CUDA off; the PyPI 'mxnet' wheel is CPU-only)",
        }
    else:
        gpu = {"available": False, "name": None, "reason": "mxnet sees no GPU (mx.context.num_gpus() == 0)"}
    cpu_name = platform.processor() or platform.machine()
    if _feature("MKLDNN"):
        cpu_name += " (oneDNN)"
    return {
        "framework": FRAMEWORK,
        "versions": {"mxnet": mx.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "devices": {"cpu": {"available": True, "name": cpu_name}, "gpu": gpu},
    }


def defaults(request: dict[str, Any]) -> dict[str, Any]:
    """Native constructor defaults of the request's optimizer, by introspection.

    The class's own keyword arguments (inspect.signature of its __init__)
    over those of the Optimizer base it forwards **kwargs to
    (learning_rate, wd, rescale_grad, clip_gradient, multi_precision, ...).
    `learning_rate=None` means 0.01 unless an lr_scheduler is given
    (Optimizer.__init__); the effective value, read from an instance built
    with no arguments, is reported.
    """
    cls = _optimizer_class(request)
    out: dict[str, Any] = {}
    chain = [k for k in reversed(cls.__mro__) if issubclass(k, mx.optimizer.Optimizer)]
    for klass in chain:
        for name, p in inspect.signature(klass.__init__).parameters.items():
            if name == "self" or p.default is inspect.Parameter.empty:
                continue
            if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            out[name] = p.default
    for name in ("param_idx2name", "sym", "param_dict", "lr_scheduler"):
        out.pop(name, None)  # plumbing, not hyperparameters
    if out.get("learning_rate") is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["learning_rate"] = cls().lr
        except Exception:  # a class that needs arguments: keep the signature's None
            pass
    return {k: _jsonable(v) for k, v in out.items()}


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Build the optimizer, feed one gradient per step, return params and state after each step."""
    cls = _optimizer_class(request)
    mode = request["mode"]
    dtype = _dtype(request["dtype"])
    ctx = _context(request["device"])
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in request["args"].items()}
    if mode == "multi_precision" or mode.endswith("_multi_precision"):
        args["multi_precision"] = True
    try:
        opt = cls(**args)
    except TypeError as exc:
        # An argument the class does not take (mxnet does not validate values).
        raise NotImplementedError(f"{request['optimizer']}({_show(args)}) refused: {exc}") from None

    params = np.asarray(request["params"], dtype=np.float64)
    grads = np.asarray(request["grads"], dtype=np.float64)
    shape = params.shape
    steps = grads.shape[0]
    run_shape = shape if shape else (1,)  # NDArrays cannot be 0-d
    rows = request.get("sparse_rows")

    weight = _ndarray(params.reshape(run_shape), ctx, dtype)
    g_all = _ndarray(grads.reshape((steps,) + run_shape), ctx, dtype) if rows is None else None
    updater = mx.optimizer.get_updater(opt)
    lr_schedule = request.get("lr_schedule")
    wanted = list(request.get("state") or ())

    # After every step the weight and the wanted state slots are copied, on
    # the device and without waiting for the engine, into one (steps, k,
    # *shape) array per dtype: one `stack` (or `copyto`) per step and dtype.
    # (`_at(i)` is NDArray's own view of row i, what `a[i]` ends in, without
    # the indexing dispatch: a quarter of the cost.)
    groups: list[_Snapshots] | None = None
    for i in range(steps):
        if lr_schedule is not None:
            opt.set_learning_rate(float(lr_schedule[i]))
        grad = g_all._at(i) if rows is None else _sparse_gradient(grads[i].reshape(run_shape), rows[i], ctx, dtype)
        try:
            updater(0, grad, weight)
        except MXNetError as exc:
            _explain_refusal(exc, opt, updater, weight)
            raise
        if groups is None:
            slots = _named_state(opt, updater.states[0], weight)
            unknown = [name for name in wanted if name not in slots]
            if unknown:
                raise KeyError(
                    f"{type(opt).__name__} has no state slot {', '.join(map(repr, unknown))}"
                    f" (its slots: {', '.join(slots) or 'none'}; mxnet/optimizer/optimizer.py"
                    f" {type(opt).__name__}.create_state)"
                )
            # a slot the configuration does not keep (SGD without momentum) is left out
            tracked = [(_PARAMS, weight)] + [(n, slots[n]) for n in wanted if slots[n] is not None]
            groups = _Snapshots.group(tracked, steps, run_shape, ctx)
        for group in groups:
            group.take(i)
    out: dict[str, np.ndarray] = {}
    for group in groups or ():
        out.update(group.result((steps,) + shape))
    params_out = out.pop(_PARAMS)
    return {"params": params_out, "state": out}


_PARAMS = "\0params"
_BIG = 1 << 16  # elements from which the engine-side cast pays off


class _Snapshots:
    """Copies of same-dtype NDArrays after every step, kept in one device array."""

    def __init__(self, names: list[str], arrays: list[Any], steps: int, shape: tuple[int, ...], ctx):
        self.names, self.arrays = names, arrays
        self.sparse = any(a.stype != "default" for a in arrays)
        inner = (len(arrays),) if len(arrays) > 1 else ()
        self.store = mx.nd.empty((steps,) + inner + shape, ctx=ctx, dtype=arrays[0].dtype)

    @classmethod
    def group(cls, tracked: list[tuple[str, Any]], steps: int, shape: tuple[int, ...], ctx) -> list["_Snapshots"]:
        by_dtype: dict[Any, list[tuple[str, Any]]] = {}
        for name, a in tracked:
            by_dtype.setdefault(np.dtype(a.dtype), []).append((name, a))
        return [cls([n for n, _ in items], [a for _, a in items], steps, shape, ctx) for items in by_dtype.values()]

    def take(self, i: int) -> None:
        arrays = self.arrays
        if self.sparse:  # (a row_sparse state, kept only for a row_sparse weight)
            arrays = [a.tostype("default") if a.stype != "default" else a for a in arrays]
        if len(arrays) == 1:
            arrays[0].copyto(self.store._at(i))
        else:
            mx.nd.stack(*arrays, axis=0, out=self.store._at(i))

    def result(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        if self.store.context.device_type == "cpu" and self.store.size >= _BIG and _zero_copy(np.dtype(np.float64)):
            # one cast on the engine, written straight into numpy memory
            # (instead of asnumpy's copy and a float64 astype on top; for
            # small arrays asnumpy is the cheaper call)
            a = np.empty(self.store.shape, dtype=np.float64)
            view = mx.nd.from_numpy(a, zero_copy=True)
            mx.nd.cast(self.store, dtype="float64", out=view)
            view.wait_to_read()
            del view  # drops MXNet's reference to `a`
            a.flags.writeable = True
        else:
            a = self.store.asnumpy().astype(np.float64)
        if len(self.arrays) == 1:
            return {self.names[0]: a.reshape(shape)}
        return {name: a[:, j].reshape(shape) for j, name in enumerate(self.names)}


# ---------------------------------------------------------------------------


def _optimizer_class(request: dict[str, Any]):
    name = request["optimizer"]
    given = request.get("optimizer_object")
    if given is not None:  # a user's optimizer, imported by the worker (conformance/worker.py)
        if not (isinstance(given, type) and issubclass(given, mx.optimizer.Optimizer)):
            raise TypeError(f"{name} is not an mx.optimizer.Optimizer subclass (it is {given!r})")
        return given
    prefix = "mxnet.optimizer."
    if not name.startswith(prefix):
        raise NotImplementedError(f"{name!r} is not an mxnet.optimizer optimizer")
    obj: Any = mx.optimizer
    for part in name[len(prefix):].split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise NotImplementedError(f"mxnet {mx.__version__} has no {name}")
    if not (isinstance(obj, type) and issubclass(obj, mx.optimizer.Optimizer)):
        raise NotImplementedError(f"{name} is not an mx.optimizer.Optimizer class")
    return obj


def _dtype(name: str):
    if name == "bfloat16":
        raise NotImplementedError(
            f"mxnet {mx.__version__} optimizers have no bfloat16: the update ops' type switch"
            " rejects it (MXNetError: Unknown type enum 12, src/operator/optimizer_op-inl.h),"
            " and numpy has no bfloat16 to build the NDArray from"
        )
    try:
        return _DTYPES[name]
    except KeyError:
        raise NotImplementedError(f"mxnet has no dtype {name}") from None


def _num_gpus() -> int:
    try:
        return int(mx.context.num_gpus())
    except MXNetError:
        return 0


def _feature(name: str) -> bool:
    try:
        return bool(mx.runtime.Features().is_enabled(name))
    except (MXNetError, RuntimeError, AttributeError):
        return False


def _context(name: str):
    if name == "cpu":
        return mx.cpu(0)
    if name == "gpu":
        if _num_gpus() == 0:
            raise NotImplementedError(describe()["devices"]["gpu"]["reason"])
        return mx.gpu(0)
    raise NotImplementedError(f"unknown mxnet device {name!r} (known: {', '.join(DEVICES)})")


def _ndarray(a: np.ndarray, ctx, dtype):
    """A new NDArray holding `a` in `dtype`; never shares memory with `a` (the optimizer writes in place)."""
    own = np.array(a, dtype=dtype, order="C", copy=True)
    if ctx.device_type == "cpu" and _zero_copy(own.dtype):
        # zero-copy from our own converted copy (DLPack): a third of the
        # time of mx.nd.array, which converts and copies once more; the
        # NDArray keeps a reference to `own`
        return mx.nd.from_numpy(own, zero_copy=True)
    return mx.nd.array(own, ctx=ctx, dtype=dtype)


def _zero_copy(dtype: np.dtype) -> bool:
    """Whether mx.nd.from_numpy takes this dtype: it came with MXNet 1.5, and
    1.5's refuses float16 (ValueError: float16 is not supported); before it,
    and there, the adapter copies with mx.nd.array (measured on 1.3.1 and 1.5.1)."""
    if not hasattr(mx.nd, "from_numpy"):
        return False
    return dtype != np.float16 or _VERSION >= (1, 6)


def _sparse_gradient(g: np.ndarray, rows: Any, ctx, dtype):
    """A row_sparse gradient holding rows `rows` of `g` (the other rows are zero).

    A row_sparse array lists each row once, in ascending order. MXNet does not
    check it (only check_format(full_check=True) does), and the non-lazy
    sgd_mom_update and adam_update kernels silently put slices on the wrong
    rows for repeated or unsorted indices; so rows are sorted, and a case that
    repeats a row is refused rather than summed here."""
    if len(set(rows)) != len(rows):
        raise NotImplementedError("an MXNet row_sparse array cannot list a row twice (its indices must be unique and ascending)")
    index = np.asarray(sorted(rows), dtype=np.int64)
    data = g[index] if index.size else np.zeros((0,) + g.shape[1:])
    return mx.nd.sparse.row_sparse_array(
        (mx.nd.array(data, ctx=ctx, dtype=dtype), mx.nd.array(index, ctx=ctx, dtype=np.int64)),
        shape=g.shape, ctx=ctx, dtype=dtype,
    )


def _uses_master_copy(opt, weight) -> bool:
    return bool(opt.multi_precision) and weight.dtype == np.float16


def _named_state(opt, state: Any, weight) -> dict[str, Any]:
    """{native slot name: NDArray or None} from the updater's state of one weight."""
    if _uses_master_copy(opt, weight):
        # SGD and NAG build (inner, weight32) themselves; the base class
        # (every other optimizer) builds (weight32, inner)
        # (create_state_multi_precision).
        own = type(opt).create_state_multi_precision is not mx.optimizer.Optimizer.create_state_multi_precision
        inner, master = (state[0], state[1]) if own else (state[1], state[0])
    else:
        inner, master = state, None
    names = _SLOTS.get(type(opt).__name__, ())
    values = tuple(inner) if isinstance(inner, (tuple, list)) else (inner,)
    if len(values) > len(names):
        raise ValueError(f"{type(opt).__name__} state has {len(values)} parts; the adapter's table names {len(names)}")
    # slots the configuration does not keep (SGD without momentum, RMSProp
    # not centered) are None
    out = dict(zip(names, values + (None,) * (len(names) - len(values))))
    if master is not None:
        out["weight32"] = master
    return out


def _explain_refusal(exc: MXNetError, opt, updater, weight) -> None:
    """Raise NotImplementedError where MXNet refused the configuration itself.

    - A hyperparameter outside the normal range of its type: the update ops
      take their hyperparameters as float32 fields of a dmlc::Parameter
      (NDArray scalar arithmetic: double), whose parser refuses a nonzero
      value below the smallest normal number or above the largest ("Out of
      range value for momentum, value='1e-40'"), before anything runs.
    - RMSProp, AdaGrad and AdaDelta create their state with
      `zeros(shape, ctx)`, i.e. float32 whatever the weight's dtype, and
      their update refuses a float16 or float64 weight next to it.
    Anything else stays a crash.
    """
    text = str(exc)
    if "Out of range value for" in text:
        what = text[text.index("Out of range value for"):].split(", in operator")[0]
        op = text.split("in operator ")[1].split("(")[0] if "in operator " in text else "the update op"
        raise NotImplementedError(
            f"mxnet refuses the hyperparameter: {what} (in {op}: a dmlc::Parameter field rejects a"
            " nonzero value outside the normal range of its type, float32 for the update ops'"
            " hyperparameters, double for NDArray scalar arithmetic)"
        ) from None
    state = updater.states.get(0)
    target = weight
    if _uses_master_copy(opt, weight):
        target = None  # the update runs on the float32 master copy
    parts = []

    def walk(s):
        if isinstance(s, (tuple, list)):
            for x in s:
                walk(x)
        elif s is not None:
            parts.append(s)

    walk(state)
    if target is not None and "Incompatible attr" in text and any(p.dtype != target.dtype for p in parts):
        kinds = sorted({np.dtype(p.dtype).name for p in parts})
        name = type(opt).__name__
        raise NotImplementedError(
            f"mxnet {name} keeps its state in {'/'.join(kinds)} whatever the weight's dtype"
            f" ({name}.create_state: zeros(shape, ctx)), and its update refuses a"
            f" {np.dtype(weight.dtype).name} weight next to it (MXNetError: Incompatible attr ..."
            f" expected {np.dtype(weight.dtype).name}); float16 runs with multi_precision=True"
        ) from None


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return repr(v)


def _show(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
