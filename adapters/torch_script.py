"""The PyTorch part of a standalone reproducer (conformance/reproducer.py).

Writes, as plain torch code a maintainer can read, what `torch.py` does for
one request: build the optimizer with its native arguments and the mode's
implementation flag, give it one gradient per step (a sparse COO tensor
for a sparse case, rows listed as the case lists them) and collect the
parameter after every step. It imports no framework: a report is written
anywhere.
"""

from __future__ import annotations

from typing import Any

#: The implementation flag each mode sets (as in torch.py `_MODE_FLAGS`).
MODE_FLAGS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def imports(request: dict[str, Any]) -> list[str]:
    return ["import torch"]


def _args(request: dict[str, Any]) -> str:
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in request["args"].items()}
    args.update(MODE_FLAGS.get(request["mode"], {}))
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def run_source(request: dict[str, Any], name: str = "run") -> str:
    dtype = f"torch.{request['dtype']}"
    device = request["device"]
    lines = [
        f"def {name}(params, grads, lrs, rows, values):",
        f"    p = torch.nn.Parameter(torch.tensor(params, dtype={dtype}, device={device!r}))",
        f"    opt = {request['optimizer']}([p], {_args(request)})",
        "    out = []",
        "    for i in range(steps):",
    ]
    if request.get("lr_schedule") is not None and request.get("lr_arg"):
        lines.append(f"        opt.param_groups[0][{request['lr_arg']!r}] = float(lrs[i])")
    if request.get("sparse_rows") is not None:
        lines += [
            "        # a sparse COO gradient listing the step's rows (uncoalesced: a repeated row has one slice each)",
            f"        index = torch.tensor([rows[i]], dtype=torch.int64, device={device!r})",
            f"        slices = torch.tensor(values[i], dtype={dtype}, device={device!r}).reshape((len(rows[i]),) + p.shape[1:])",
            "        p.grad = torch.sparse_coo_tensor(index, slices, p.shape, check_invariants=True)",
        ]
    else:
        lines.append(f"        p.grad = torch.tensor(grads[i], dtype={dtype}, device={device!r})")
    lines += [
        "        opt.step()",
        "        out.append(p.detach().to('cpu', torch.float64).numpy().copy())",
        "    return np.array(out)",
    ]
    return "\n".join(lines) + "\n"
