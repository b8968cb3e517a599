"""The JAX / Optax part of a standalone reproducer (conformance/reproducer.py).

Writes, as plain jax/optax code a maintainer can read, what `jax.py` does
for one request: build the alias with its native arguments and give it one
gradient per step, collecting the parameter after every step.

- `eager`: `tx.update` and `optax.apply_updates` called op by op, outside
  `jax.jit`, with the arguments as given (Python floats and bools); a
  per-step learning rate is the schedule `lambda count: lrs[count]`.
- `jit` and any other mode (e.g. `amsgrad`, whose spec builds another
  alias): compiled as the adapter compiles it. A parameter of up to
  SCAN_MAX_ELEMENTS elements runs every step in one `jax.jit`-ed `lax.scan`
  (the step count padded to a multiple of 4; later steps never change
  earlier ones), a larger one calls a `jax.jit`-compiled step once per step,
  as a user's train loop does. The float arguments go into the compiled
  function as Python floats, which `jax.jit` traces as weakly typed float64
  scalars (a user's Python floats: arithmetic among them in float64, rounded
  to the parameters' dtype where they meet an array), and the learning rate
  is a schedule returning the step's rate (a float64 scalar), cast by optax
  to the update's dtype. The two compilations can differ in float16: inside
  the scan, jaxlib 0.10.2 on the CPU can evaluate an element-wise chain
  without rounding between its operations (XLA's excess precision), so a
  value may differ by an ulp from the step-by-step program; writing the scan
  keeps the script's values those of the run.

`jax_enable_x64` is switched on at import whatever the dtype, as the
adapter does: it makes the weakly typed scalars float64 (and float64 cases
possible). Optax has no sparse gradients: a sparse request raises
NotImplementedError. This module imports no framework: a report is written
anywhere.
"""

from __future__ import annotations

from typing import Any

DTYPES = {"float16": "jnp.float16", "bfloat16": "jnp.bfloat16", "float32": "jnp.float32", "float64": "jnp.float64"}
DEVICES = {"cpu": "cpu", "gpu": "gpu"}


def imports(request: dict[str, Any]) -> list[str]:
    return [
        "import jax",
        "import jax.numpy as jnp",
        "import optax",
        'jax.config.update("jax_enable_x64", True)  # (as the conformance run: Python floats are float64 scalars)',
    ]


def _check(request: dict[str, Any]) -> None:
    if request.get("sparse_rows") is not None:
        raise NotImplementedError("optax has no sparse gradient type (every update is a dense array)")
    if request["dtype"] not in DTYPES:
        raise NotImplementedError(f"jax has no dtype {request['dtype']}")
    if request["device"] not in DEVICES:
        raise NotImplementedError(f"unknown jax device {request['device']!r} (known: {', '.join(DEVICES)})")
    if not request["optimizer"].startswith("optax.") and not request.get("import"):
        raise NotImplementedError(f"{request['optimizer']!r} is not an optax optimizer")
    if request.get("lr_schedule") is not None and not request.get("lr_arg"):
        raise NotImplementedError("a per-step learning rate needs the native learning-rate argument (lr_arg)")


def _value(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _kwargs(items: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in items.items())


def run_source(request: dict[str, Any], name: str = "run") -> str:
    _check(request)
    if request["mode"] == "eager":
        return _eager(request, name)
    return _jit(request, name)


def _head(request: dict[str, Any], name: str) -> list[str]:
    return [
        f"def {name}(params, grads, lrs, rows, values):",
        f"    with jax.default_device(jax.devices({DEVICES[request['device']]!r})[0]):",
        f"        p = jnp.asarray(params.astype({DTYPES[request['dtype']]}))",
    ]


def _eager(request: dict[str, Any], name: str) -> str:
    dtype = DTYPES[request["dtype"]]
    args = {k: repr(_value(v)) for k, v in request["args"].items()}
    lines = _head(request, name)
    if request.get("lr_schedule") is not None:
        lines.append("        lr_steps = jnp.asarray(lrs)  # float64: the learning rate of each step")
        args[request["lr_arg"]] = "lambda count: lr_steps[count]"
    lines += [
        f"        tx = {request['optimizer']}({_kwargs(args)})",
        "        state = tx.init(p)",
        "        out = []",
        "        for i in range(steps):",
        f"            updates, state = tx.update(jnp.asarray(grads[i].astype({dtype})), state, p)",
        "            p = optax.apply_updates(p, updates)",
        "            out.append(np.asarray(p, dtype=np.float64))",
        "    return np.array(out)",
    ]
    return "\n".join(lines) + "\n"


#: As jax.py SCAN_MAX_ELEMENTS and STEP_BUCKET: parameters up to this many elements
#: run every step in one compiled `lax.scan`, the step count padded to 32 (or the next
#: power of two beyond).
SCAN_MAX_ELEMENTS = 1 << 13
STEP_BUCKET = 32


def _jit(request: dict[str, Any], name: str) -> str:
    dtype = DTYPES[request["dtype"]]
    args = dict(request["args"])
    lr_arg, schedule = request.get("lr_arg"), request.get("lr_schedule")
    # As jax.py `_run_jit`: the learning rate (a number, or a schedule) becomes a
    # schedule returning the step's rate, a traced float64 scalar; the other floats
    # are traced as Python floats; anything else (bools, None, ints, tuples) is
    # written into the alias call.
    lr = None  # the source of the learning rate, if one is traced
    if lr_arg is not None:
        given = args.pop(lr_arg, None)
        if schedule is not None:
            lr = "lrs"
        elif isinstance(given, (int, float)) and not isinstance(given, bool):
            lr = f"{float(given)!r}"
        else:
            args[lr_arg] = given  # (an lr that is not a number: None for adadelta, kept as given)
    hps = {k: v for k, v in args.items() if isinstance(v, float)}
    call = [f"{k}={_value(v)!r}" for k, v in args.items() if not isinstance(v, float)]
    size = getattr(request["params"], "size", SCAN_MAX_ELEMENTS + 1)
    if size <= SCAN_MAX_ELEMENTS:
        return _scan(request, name, dtype, call, hps, lr, lr_arg)
    if lr is not None:
        call.append(f"{lr_arg}=lambda count: lr")
    if hps:
        call.append("**hps")
    make_params = ", ".join((["lr"] if lr is not None else []) + (["hps"] if hps else []))
    lines = [f"def {name}(params, grads, lrs, rows, values):"]
    if hps:
        lines += [
            "    # the float arguments go into the compiled step as Python floats, which jax.jit",
            "    # traces as weakly typed float64 scalars (as a user's Python floats behave)",
            f"    hps = {hps!r}",
            "",
        ]
    lines += [
        f"    def make({make_params}):",
        f"        return {request['optimizer']}({', '.join(call)})",
        "",
        "    @jax.jit",
        f"    def step({', '.join(['p, state, g'] + ([make_params] if make_params else []))}):",
        f"        updates, state = make({make_params}).update(g, state, p)",
        "        return optax.apply_updates(p, updates), state",
        "",
        f"    with jax.default_device(jax.devices({DEVICES[request['device']]!r})[0]):",
        f"        p = jnp.asarray(params.astype({dtype}))",
    ]
    step_args = ["p, state", f"grads[i].astype({dtype})"]
    init_args = []
    if lr is not None:
        if schedule is None:
            lines.append(f"        lr = np.float64({lr})  # the learning rate, given to the step as a float64 scalar")
            step_args.append("lr")
            init_args.append("lr")
        else:
            step_args.append("np.float64(lrs[i])")
            init_args.append("np.float64(lrs[0])")
    if hps:
        step_args.append("hps")
        init_args.append("hps")
    lines += [
        f"        state = make({', '.join(init_args)}).init(p)",
        "        out = []",
        "        for i in range(steps):",
        f"            p, state = step({', '.join(step_args)})",
        "            out.append(np.asarray(p, dtype=np.float64))",
        "    return np.array(out)",
    ]
    return "\n".join(lines) + "\n"


def _scan(request: dict[str, Any], name: str, dtype: str, call: list[str], hps: dict[str, float], lr: str | None, lr_arg: str | None) -> str:
    """Every step in one jitted `lax.scan`, as the run computes small cases (and
    as a training loop written with `lax.scan` does). XLA compiles the scan's
    body as one program, and may then keep float16 and bfloat16 intermediates
    in higher precision (its excess-precision default), so its values can
    differ by an ulp from a step called per iteration."""
    if lr is not None:
        call = call + [f"{lr_arg}=lambda count: lr_steps[count]"]
    if hps:
        call = call + ["**hps"]
    lines = [f"def {name}(params, grads, lrs, rows, values):"]
    if hps:
        lines += [
            "    # the float arguments go into the compiled program as Python floats, which jax.jit",
            "    # traces as weakly typed float64 scalars (as a user's Python floats behave)",
            f"    hps = {hps!r}",
            "",
        ]
    lines += [
        "    @jax.jit",
        f"    def run_all(p, gs, lr_steps{', hps' if hps else ''}):",
        f"        tx = {request['optimizer']}({', '.join(call)})",
        "",
        "        def body(carry, g):",
        "            p, state = carry",
        "            updates, state = tx.update(g, state, p)",
        "            p = optax.apply_updates(p, updates)",
        "            return (p, state), p",
        "",
        "        return jax.lax.scan(body, (p, tx.init(p)), gs)[1]",
        "",
        f"    padded = max({STEP_BUCKET}, 1 << (steps - 1).bit_length())  # as the run: later steps never change earlier ones",
        "    gs = np.zeros((padded,) + params.shape)",
        "    gs[:steps] = grads",
        "    lr_steps = np.zeros(padded)",
    ]
    if lr is not None:
        lines.append(f"    lr_steps[:steps] = {lr}  # float64: the learning rate of each step")
    lines += [
        f"    with jax.default_device(jax.devices({DEVICES[request['device']]!r})[0]):",
        f"        ps = run_all(jnp.asarray(params.astype({dtype})), gs.astype({dtype}), lr_steps{', hps' if hps else ''})",
        "    return np.asarray(ps, dtype=np.float64)[:steps]",
    ]
    return "\n".join(lines) + "\n"
