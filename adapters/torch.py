"""PyTorch adapter: runs a case through torch.optim's optimizers, or a user's
`torch.optim.Optimizer` subclass that the worker imported (`optimizer_object`).

It knows torch and nothing about update rules: which optimizer to build,
its native arguments and the state slots to read come in the request (the
spec's mapping). It knows how torch selects an implementation, which is
what the modes name:

- `forloop`: `foreach=False`, the per-tensor reference path
  (torch/optim/*.py `_single_tensor_*`); torch's own default on the CPU;
- `foreach`: `foreach=True`, the multi-tensor path (`_multi_tensor_*`),
  torch's default on CUDA;
- `fused`: `fused=True`, one fused kernel (`_fused_*`, CPU and CUDA);
- `differentiable`: `foreach=False, differentiable=True`, the per-tensor
  path with autograd through the step (torch/optim/optimizer.py
  `_use_grad_for_differentiable`); the parameter is a leaf that does not
  require grad, so the in-place update is allowed and the numerics are those
  of the differentiable branch;
- `capturable`: `foreach=False, capturable=True`, the CUDA-graph-safe path
  (step counts and bias corrections as device tensors; CUDA only);
- any other mode name (e.g. `sparse_adam`) builds the spec's optimizer with
  no implementation flag.

This module runs in-process or as a worker (conformance/worker.py loads it
by path), so it imports only the standard library, numpy and torch.
Requests and results are plain dicts of numbers, strings and numpy arrays;
`NotImplementedError` means "this framework cannot run this" (a skip with
the reason), any other exception is a crash.
"""

from __future__ import annotations

import inspect
import math
import platform
from typing import Any

import numpy as np
import torch

FRAMEWORK = "torch"
DEVICES = ("cpu", "cuda")
_MODE_FLAGS = {
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
    "differentiable": {"foreach": False, "differentiable": True},
    "capturable": {"foreach": False, "capturable": True},
}
_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def describe() -> dict[str, Any]:
    """Versions and devices, for the run header and to skip absent devices."""
    cuda = torch.cuda.is_available()
    devices: dict[str, Any] = {
        "cpu": {"available": True, "name": platform.processor() or platform.machine()},
        "cuda": {
            "available": cuda,
            "name": torch.cuda.get_device_name(0) if cuda else None,
            "reason": None if cuda else "CUDA is not available to this torch (torch.cuda.is_available() is False)",
        },
    }
    return {
        "framework": FRAMEWORK,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "devices": devices,
    }


def defaults(request: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's own default arguments, read from its constructor's signature."""
    cls = _optimizer_class(request)
    out: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "params") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[name] = "<required>" if param.default is param.empty else plain(param.default)
    return out


def plain(value: Any) -> Any:
    """A default as JSON data: numbers, flags, None, lists; anything else as its repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)


def _optimizer_class(request: dict[str, Any]):
    name = request["optimizer"]
    given = request.get("optimizer_object")
    if given is not None:  # a user's optimizer, imported by the worker (conformance/worker.py)
        if not (isinstance(given, type) and issubclass(given, torch.optim.Optimizer)):
            raise TypeError(f"{name} is not a torch.optim.Optimizer subclass (it is {given!r})")
        return given
    if not name.startswith("torch.optim."):
        raise NotImplementedError(f"{name!r} is not a torch.optim optimizer")
    obj: Any = torch.optim
    for part in name.split(".")[2:]:
        obj = getattr(obj, part, None)
        if obj is None:
            raise NotImplementedError(f"torch {torch.__version__} has no {name}")
    return obj


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("CUDA is not available to this torch (torch.cuda.is_available() is False)")
    if name not in DEVICES:
        raise NotImplementedError(f"unknown torch device {name!r} (known: {', '.join(DEVICES)})")
    return torch.device(name)


def _gradient(g: torch.Tensor, rows: Any, values: Any = None) -> torch.Tensor:
    """The step's gradient: dense, or a sparse COO tensor listing `rows` in
    the given order (uncoalesced: a row listed twice has one slice each)."""
    if rows is None:
        return g.clone()
    index = torch.tensor([list(rows)], dtype=torch.int64, device=g.device)
    if values is None:
        sliced = g[list(rows)]
    else:
        sliced = torch.tensor(np.asarray(values, dtype=np.float64), dtype=g.dtype, device=g.device).reshape((len(rows),) + tuple(g.shape[1:]))
    return torch.sparse_coo_tensor(index, sliced, g.shape, check_invariants=True)


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Build the optimizer, feed one gradient per step, return params and state after each step."""
    cls = _optimizer_class(request)
    dtype = _DTYPES.get(request["dtype"])
    if dtype is None:
        raise NotImplementedError(f"torch has no dtype {request['dtype']}")
    device = _device(request["device"])
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in request["args"].items()}
    args.update(_MODE_FLAGS.get(request["mode"], {}))

    # torch.tensor copies: the optimizer updates its parameter in place, and
    # the caller's arrays (in-process) must stay as they were.
    grads = torch.tensor(np.asarray(request["grads"], dtype=np.float64), dtype=dtype, device=device)
    # (differentiable: a leaf that does not require grad takes the in-place update under autograd)
    p = torch.nn.Parameter(torch.tensor(np.asarray(request["params"], dtype=np.float64), dtype=dtype, device=device),
                           requires_grad=not args.get("differentiable", False))
    try:
        opt = cls([p], **args)
    except (TypeError, ValueError) as exc:
        # torch validates its arguments in the constructor: the combination
        # (or the mode's flag) is not offered, which is a skip, not a crash.
        raise NotImplementedError(f"{request['optimizer']}({_show(args)}) refused: {exc}") from None

    steps = grads.shape[0]
    lr_arg, schedule = request.get("lr_arg"), request.get("lr_schedule")
    rows, values = request.get("sparse_rows"), request.get("sparse_values")
    wanted = list(request.get("state", ()))
    out = torch.empty((steps,) + tuple(p.shape), dtype=dtype, device=device)
    state_out: dict[str, torch.Tensor] = {}
    for i in range(steps):
        if schedule is not None:
            for group in opt.param_groups:
                group[lr_arg] = float(schedule[i])
        p.grad = _gradient(grads[i], rows[i] if rows is not None else None, values[i] if values is not None else None)
        opt.step()
        with torch.no_grad():
            out[i].copy_(p)
            st = opt.state[p]
            for name in wanted:
                value = st.get(name)
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    if value.is_sparse:  # SGD's momentum buffer for sparse gradients
                        value = value.to_dense()
                    if name not in state_out:
                        state_out[name] = torch.full_like(out, float("nan"))
                    state_out[name][i].copy_(value)
    return {
        "params": _numpy(out),
        "state": {name: _numpy(t) for name, t in state_out.items()},
    }


def _numpy(t: torch.Tensor) -> np.ndarray:
    # In the tensor's own dtype where numpy has it (the caller widens to
    # float64 once); bfloat16, which numpy lacks, goes out as float32 (exact).
    dtype = torch.float32 if t.dtype == torch.bfloat16 else t.dtype
    return t.detach().to(device="cpu", dtype=dtype).numpy()


def _show(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
