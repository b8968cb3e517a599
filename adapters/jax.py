"""JAX / Optax adapter: runs a case through optax's own optimizer aliases.

It knows JAX and Optax and nothing about update rules: the alias to build
(`optax.adam`), its native arguments and the state fields to read come in
the request (the spec's mapping). It knows how JAX runs code, which is what
the modes name:

- `eager`: op-by-op dispatch, the way a user calls `tx.update` and
  `optax.apply_updates` outside `jax.jit`. The alias gets the arguments as
  given (Python floats and bools).
- `jit`: every step compiled, as in a user's `jax.jit`-ed train step. For
  parameters of up to SCAN_MAX_ELEMENTS elements (every generated case) all
  steps of a case run in one compiled call (`lax.scan`, the step count
  padded up to 32, or the next power of two beyond); larger ones call one compiled step per step
  from Python, as a user's loop does (XLA's CPU loops copy large stacked
  per-step outputs slowly). The executables are cached by (optimizer,
  static arguments, names of the traced arguments, shape, dtype, device,
  padded step count for the scan), so the examples of a cell that differ
  only in hyperparameter values, data or schedule share one compilation;
  `cache_info()` counts them.
- any other mode name (e.g. `amsgrad`, a mode whose spec builds another
  alias) runs like `jit`.

How hyperparameters reach optax, and why this reproduces what users get:
a user writes `optax.adam(1e-3, b1=0.9)` with Python floats. JAX treats
Python scalars as *weakly typed*: arithmetic between them stays in Python
(float64: `1 - b1`), and where one meets an array it is rounded to the
array's dtype (`b1 * mu` multiplies a float16 `mu` by float16(0.9)). The
`jit` mode passes the float arguments into the compiled function as Python
floats, which `jax.jit` traces as weakly typed float64 scalars, so the same
values meet the arrays the same way without being compile-time constants.
(`optax.inject_hyperparams` would not do: it turns every float into a
strongly typed array of the parameters' dtype, or of `hyperparam_dtype`,
optax/schedules/_inject.py `_convert_floats`, so `1 - b1` would be computed
in float16, or float64 would promote float32 state.) The spec declares this
as `hyperparameter_dtype: tensor`.

A per-step learning rate (`lr_schedule`) is given the way Optax takes one:
the learning-rate argument becomes a schedule, `lambda count: lrs[count]`,
which `optax/_src/transform.py scale_by_learning_rate` wraps in
`scale_by_schedule` (evaluated at the 0-based step count, cast to the
update's dtype: the same rounding as a constant lr). The `jit` mode always
passes the learning rate this way (a constant lr is a constant schedule),
so a case with and without a schedule share one compilation.

float64 needs `jax_enable_x64`; it is switched on at import. Inputs are
converted to the case dtype explicitly, so float32, float16 and bfloat16
cases still compute in their own dtype; Python-float hyperparameters stay
weak (float64 arithmetic among themselves, as in Python).

This module runs in-process or as a worker (conformance/worker.py loads it
by path), so it imports only the standard library, numpy and jax/optax.
`NotImplementedError` means "this framework cannot run this" (a skip with
the reason), any other exception is a crash.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import math
import os
import platform
import shutil
import tempfile
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

import jax

jax.config.update("jax_enable_x64", True)


def _compilation_cache() -> str | None:
    """Keep what XLA compiles, by content, for the rest of this process.

    JAX's in-memory caches are keyed by the Python function, so a computation
    built anew on every call compiles anew: optax's Muon compiles its
    vmapped Newton-Schulz iteration on every eager `update` (measured: about
    2.4 s a case), and every case's eager primitives compile again for each
    new shape. JAX's persistent compilation cache is keyed by the compiled
    module itself (its HLO, the compile options, the jax/jaxlib versions and
    the backend), so the same computation is compiled once and the same
    executable runs: the numbers cannot change, only the time (measured on
    the Muon and Adam eager float32 cells: 44 s without, 23 s with).
    The cache lives in a temporary directory of this process, removed at
    exit; a user who configured JAX's cache (`JAX_COMPILATION_CACHE_DIR` or
    `jax_compilation_cache_dir`) keeps theirs.
    """
    if jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    _remove_orphaned_caches()
    path = tempfile.mkdtemp(prefix=f"{_CACHE_PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, path, True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def _remove_orphaned_caches() -> None:
    """Remove the caches of workers that ended without their exit handlers (a
    worker killed for a hung case): their directory names carry their pid."""
    if os.name != "posix":  # (os.kill(pid, 0) tests a pid on POSIX only)
        return
    for entry in os.scandir(tempfile.gettempdir()):
        if not entry.name.startswith(_CACHE_PREFIX):
            continue
        pid = entry.name[len(_CACHE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (someone else's process: alive)
        return True
    return True


_CACHE_PREFIX = "conformance-jax-cache-"
COMPILATION_CACHE = _compilation_cache()

import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

FRAMEWORK = "jax"
DEVICES = ("cpu", "gpu")
_DTYPES = {
    "float16": jnp.float16,
    "bfloat16": jnp.bfloat16,
    "float32": jnp.float32,
    "float64": jnp.float64,
}

#: What `defaults` reports for an argument that has no default (conformance/defaults.py REQUIRED).
REQUIRED = "<required>"

#: Compiled executables of the jit mode (see `_run_jit` for the key); and how many were built.
_COMPILED: OrderedDict[tuple, Any] = OrderedDict()
_LOCK = threading.Lock()
COMPILATIONS = 0
#: The least recently used executables beyond this many are dropped (a long run sees many shapes).
CACHE_SIZE = 512
#: Scans run this many steps at least (a power of two): one compilation per shape for 1 to 32 steps.
STEP_BUCKET = 32
#: Parameters up to this many elements run all steps in one lax.scan, larger ones step by step.
SCAN_MAX_ELEMENTS = 1 << 13


def describe() -> dict[str, Any]:
    """Versions and devices, for the run header and to skip absent devices."""
    cpu = jax.devices("cpu")[0]
    gpu, why = _gpu()
    return {
        "framework": FRAMEWORK,
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "optax": optax.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "devices": {
            "cpu": {"available": True, "name": f"{cpu.device_kind} ({platform.processor() or platform.machine()})"},
            "gpu": {
                "available": gpu is not None,
                "name": gpu.device_kind if gpu is not None else None,
                "reason": why,
            },
        },
    }


def _gpu() -> tuple[Any, str | None]:
    try:
        devices = jax.devices("gpu")
    except RuntimeError as exc:
        return None, f"no GPU backend in this jaxlib {jaxlib.__version__} ({str(exc).splitlines()[0]})"
    if not devices:
        return None, "jax.devices('gpu') is empty"
    return devices[0], None


def _device(name: str):
    if name == "cpu":
        return jax.devices("cpu")[0]
    if name == "gpu":
        gpu, why = _gpu()
        if gpu is None:
            raise NotImplementedError(why)
        return gpu
    raise NotImplementedError(f"unknown jax device {name!r} (known: {', '.join(DEVICES)})")


def _factory(request: dict[str, Any]):
    """`optax.adam` -> the alias function (any dotted path under optax); a
    user's factory of a GradientTransformation, imported by the worker
    (`optimizer_object`, conformance/worker.py)."""
    name = request["optimizer"]
    given = request.get("optimizer_object")
    if given is not None:
        if not callable(given):
            raise TypeError(f"{name} is not callable (it is {given!r}): a target names a function that returns an optax.GradientTransformation")
        return given
    if not name.startswith("optax."):
        raise NotImplementedError(f"{name!r} is not an optax optimizer")
    obj: Any = optax
    for part in name.split(".")[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            raise NotImplementedError(f"optax {optax.__version__} has no {name}")
    if not callable(obj):
        raise NotImplementedError(f"{name} is not callable")
    return obj


@functools.lru_cache(maxsize=None)
def _signature(fn) -> inspect.Signature:
    return inspect.signature(fn)


def defaults(request: dict[str, Any]) -> dict[str, Any]:
    """The alias's own defaults, read from its signature: {native argument: default}.

    An argument without a default (optax's learning_rate, mostly) is
    "<required>"; a default that is not a JSON value (a dtype, a callable) is
    given as its repr. The same in every mode: a mode does not change the
    alias. (A None default means "off" in optax: adadelta's learning_rate
    None skips the scaling, sgd's and rmsprop's momentum None builds no trace.)
    """
    fn = _factory(request)
    out: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[name] = REQUIRED if param.default is param.empty else _json_value(param.default)
    return out


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return repr(value)


def _split_args(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Static arguments (bools, None, strings, ints, tuples) and traced ones (floats)."""
    static: dict[str, Any] = {}
    traced: dict[str, float] = {}
    for k, v in args.items():
        if isinstance(v, float):
            traced[k] = v
        elif isinstance(v, list):
            static[k] = tuple(v)
        else:
            static[k] = v
    return static, traced


def _find_slots(state: Any, wanted: tuple[str, ...], shape: tuple[int, ...]) -> dict[str, Any]:
    """The arrays in an optax state pytree whose field names are `wanted` (first one in chain order)."""
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, (jax.Array, np.ndarray)) or node is None:
            return  # a leaf (and attribute look-ups on a jax.Array are slow)
        fields = getattr(node, "_fields", None)
        if fields is not None:  # a NamedTuple state
            for name in fields:
                value = getattr(node, name)
                if name in wanted and name not in found and hasattr(value, "shape") and tuple(value.shape) == shape:
                    found[name] = value
                else:
                    walk(value)
        elif isinstance(node, (tuple, list)):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(state)
    return found


def _schedule(lrs: Any):
    return lambda count: lrs[count]


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Build the alias, feed one gradient per step, return params and state after each step."""
    factory = _factory(request)
    mode = request.get("mode", "eager")
    dtype = _DTYPES.get(request["dtype"])
    if dtype is None:
        raise NotImplementedError(f"jax has no dtype {request['dtype']}")
    if request.get("sparse_rows") is not None:
        raise NotImplementedError("optax has no sparse gradient type (every update is a dense array)")
    device = _device(request["device"])
    args = dict(request["args"])
    lr_arg, schedule = request.get("lr_arg"), request.get("lr_schedule")
    if schedule is not None and lr_arg is None:
        raise NotImplementedError("a per-step learning rate needs the native learning-rate argument (lr_arg)")
    try:
        _signature(factory).bind(**args)
    except TypeError as exc:
        raise NotImplementedError(f"{request['optimizer']}({_show(args)}) refused: {exc}") from None

    # The inputs are float64 holding values of the case dtype: converted exactly, on the host.
    params = np.asarray(request["params"], dtype=np.float64).astype(dtype)
    grads = np.asarray(request["grads"], dtype=np.float64).astype(dtype)
    wanted = tuple(request.get("state", ()))
    if mode == "eager":
        out, slots = _run_eager(factory, args, lr_arg, schedule, params, grads, device, wanted)
    else:
        out, slots = _run_jit(request["optimizer"], factory, args, lr_arg, schedule, params, grads, device, wanted)
    return {"params": out, "state": slots}


def _trajectories(steps: int, ps: list, slots: dict[str, list]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-step device arrays -> float64 (steps, *shape) arrays, one conversion pass each."""
    def stack(values: list) -> np.ndarray:
        out = np.empty((steps,) + tuple(values[0].shape), dtype=np.float64)
        for i, v in enumerate(values[:steps]):
            out[i] = np.asarray(v)
        return out

    return stack(ps), {k: stack(v) for k, v in slots.items() if len(v) >= steps}


def _run_eager(factory, args, lr_arg, schedule, params, grads, device, wanted):
    with jax.default_device(device):
        p = jax.device_put(params, device)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        if schedule is not None:
            kwargs[lr_arg] = _schedule(jax.device_put(np.asarray(schedule, dtype=np.float64), device))
        tx = factory(**kwargs)
        state = tx.init(p)
        ps, slots = [], {}
        for g in list(jax.device_put(grads, device)):  # one transfer, then one split
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
            ps.append(p)
            for name, value in _find_slots(state, wanted, p.shape).items():
                slots.setdefault(name, []).append(value)
        return _trajectories(len(grads), ps, slots)


def _bucket(steps: int) -> int:
    """The step count padded up to STEP_BUCKET, or the next power of two beyond,
    so that one compilation serves every step count of a shape (the ci
    profile's 1 to 20 steps; padded to multiples of 4 there were five, and
    a compilation costs about 100 ms, while a padded step of a generated
    case's parameter costs microseconds). Padding is causal: the steps after
    the case's own never change its results, and they are dropped."""
    return max(STEP_BUCKET, 1 << (steps - 1).bit_length())


def _scan_fn(factory, static, lr_arg, wanted):
    """All steps in one program (small parameters: no dispatch per step)."""

    def run_all(params, grads, lrs, hps):
        kwargs = dict(static, **hps)
        if lr_arg is not None:
            kwargs[lr_arg] = _schedule(lrs)
        tx = factory(**kwargs)

        def body(carry, g):
            p, st = carry
            updates, st = tx.update(g, st, p)
            p = optax.apply_updates(p, updates)
            return (p, st), (p, _find_slots(st, wanted, p.shape))

        _, (ps, slots) = lax.scan(body, (params, tx.init(params)), grads)
        # (float64 holds every value of the case dtype exactly; converting here is one fused pass)
        return jax.tree.map(lambda x: x.astype(jnp.float64), (ps, slots))

    return run_all


def _step_fns(factory, static, lr_arg, wanted):
    """init and one step as programs (large parameters: XLA's CPU loops copy the stacked
    per-step outputs slowly, so the steps are called from Python as a user's jitted step is).
    The step's learning rate is an argument, given to optax as a schedule."""

    def build(lr, hps):
        kwargs = dict(static, **hps)
        if lr_arg is not None:
            kwargs[lr_arg] = lambda count: lr
        return factory(**kwargs)

    def init(params, lr, hps):
        return build(lr, hps).init(params)

    def step(p, st, g, lr, hps):
        updates, st = build(lr, hps).update(g, st, p)
        p = optax.apply_updates(p, updates)
        return p, st, _find_slots(st, wanted, p.shape)

    return init, step


def _compiled(key: tuple, build) -> Any:
    global COMPILATIONS
    with _LOCK:
        found = _COMPILED.get(key)
        if found is not None:
            _COMPILED.move_to_end(key)
            return found
        found = build()
        _COMPILED[key] = found
        COMPILATIONS += 1
        while len(_COMPILED) > CACHE_SIZE:
            _COMPILED.popitem(last=False)
        return found


def _run_jit(optimizer, factory, args, lr_arg, schedule, params, grads, device, wanted):
    static, traced = _split_args(args)
    lr_value = None
    if lr_arg is not None:
        lr_value = traced.pop(lr_arg, None)
        static.pop(lr_arg, None)
        if lr_value is None and schedule is None:
            lr_value = args.get(lr_arg)
            if not isinstance(lr_value, (int, float)) or isinstance(lr_value, bool):
                # (an lr that is not a number: None for adadelta; keep it as given)
                static[lr_arg] = lr_value
                lr_arg = None
    steps = grads.shape[0]
    lrs = np.zeros(steps)
    if lr_arg is not None:
        lrs[:] = schedule if schedule is not None else lr_value
    # Arguments go in as numpy arrays and Python floats (placed on `device` by the
    # default_device context; far cheaper than jax.device_put per argument). Python
    # floats are traced as weakly typed float64 scalars, as users' Python floats behave.
    hps = dict(traced)
    base = (optimizer, tuple(sorted(static.items(), key=lambda kv: kv[0])), tuple(sorted(traced)), lr_arg,
            params.shape, params.dtype.name, device.platform, device.id, wanted)
    with jax.default_device(device):
        if params.size <= SCAN_MAX_ELEMENTS:
            padded = _bucket(steps)
            g = np.zeros((padded,) + grads.shape[1:], dtype=grads.dtype)
            g[:steps] = grads
            lr_in = np.pad(lrs, (0, padded - steps))
            run_all = _compiled(
                base + ("scan", padded),
                lambda: jax.jit(_scan_fn(factory, static, lr_arg, wanted)).lower(params, g, lr_in, hps).compile(),
            )
            ps, slots = run_all(params, g, lr_in, hps)
            return np.array(np.asarray(ps)[:steps]), {k: np.array(np.asarray(v)[:steps]) for k, v in slots.items()}

        lr0 = np.float64(lrs[0]) if steps else np.float64(0.0)

        def build():
            init, step = _step_fns(factory, static, lr_arg, wanted)
            init_c = jax.jit(init).lower(params, lr0, hps).compile()
            st = init_c(params, lr0, hps)
            return init_c, jax.jit(step).lower(params, st, grads[0], lr0, hps).compile()

        init_c, step_c = _compiled(base + ("step",), build)
        p, st = params, init_c(params, lr0, hps)
        ps, slots = [], {}
        for i in range(steps):
            p, st, found = step_c(p, st, grads[i], np.float64(lrs[i]), hps)
            ps.append(p)
            for name, value in found.items():
                slots.setdefault(name, []).append(value)
        return _trajectories(steps, ps, slots)


def cache_info() -> dict[str, int]:
    """How many jit executables are cached and how many compilations this process did."""
    return {"cached": len(_COMPILED), "compilations": COMPILATIONS}


def _show(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
