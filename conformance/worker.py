"""The adapter worker: one adapter served over stdin/stdout in its own process.

Why: MXNet needs numpy < 1.24 (its own interpreter), the upgrade gate runs
two versions of one framework side by side, and a framework that segfaults
or hangs must not take the suite with it. So an adapter can run under any
Python interpreter as

    python path/to/conformance/worker.py path/to/adapters/<framework>.py

This file is run by path and imports only the standard library and numpy
(the harness package need not be importable in the worker's environment);
it loads the adapter module by path as well.

The protocol is language-neutral: one JSON object per line each way.
Arrays are objects `{"__array__": {"dtype": "<f8", "shape": [...], "data":
BASE64}}` (little-endian float64 bytes, exact and fast); no pickle.

    -> {"op": "describe"}                 <- {"ok": {...}}
    -> {"op": "run", "request": {...}}    <- {"ok": {...}} | {"unsupported": "why"}
       (the request's keys and the result's: conformance/protocol.py)
                                             | {"error": {"type", "message", "traceback"}}
    -> {"op": "defaults", "request": {"optimizer", "mode"}}
                                          <- {"ok": {native argument: default}} (introspected)
    -> {"op": "imported", "module": NAME} <- {"ok": {"module", "version", "file"}}

A request whose "import" names a module (a user's optimizer, which the
harness runs only when the user allowed that module) gets its optimizer
imported here, by this file, and handed to the adapter as the object
"optimizer_object"; adapters import nothing but their framework.
    -> {"op": "quit"}

The worker keeps the real stdout for the protocol and points file
descriptor 1 at stderr, so whatever the framework prints cannot corrupt it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
import traceback
from typing import Any

import numpy as np


def encode(value: Any) -> Any:
    """Plain JSON data from dicts, lists, scalars and numpy arrays."""
    if isinstance(value, np.ndarray):
        a = np.asarray(value, dtype="<f8")  # (ascontiguousarray would make a 0-d array 1-d)
        return {"__array__": {"dtype": "<f8", "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return {"__float__": "nan"}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {"__float__": "inf" if value > 0 else "-inf"}
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value and len(value) == 1:
            spec = value["__array__"]
            data = base64.b64decode(spec["data"])
            return np.frombuffer(data, dtype=spec["dtype"]).reshape(spec["shape"]).astype(np.float64)
        if "__float__" in value and len(value) == 1:
            return float(value["__float__"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def load_adapter(path: str):
    spec = importlib.util.spec_from_file_location("conformance_worker_adapter", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load an adapter from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user_object(name: str, module: str) -> Any:
    """`name` (a dotted path under the allowed top-level `module`): the
    longest importable module prefix, then attributes."""
    if name != module and not name.startswith(module + "."):
        raise ImportError(f"{name!r} is not under the allowed module {module!r}")
    parts = name.split(".")
    obj = importlib.import_module(module)
    for i in range(len(parts) - 1, 1, -1):
        candidate = ".".join(parts[:i])
        try:
            obj = importlib.import_module(candidate)
            break
        except ModuleNotFoundError as exc:
            if exc.name is None or not (candidate == exc.name or candidate.startswith(exc.name + ".")):
                raise  # the module exists, and something it imports does not
            continue
    else:
        i = 1
    path = ".".join(parts[:i])
    for part in parts[i:]:
        if not hasattr(obj, part):
            raise ImportError(f"{path} has no {part!r} (looking up {name})")
        obj = getattr(obj, part)
        path += "." + part
    return obj


def imported(module: str) -> dict[str, Any]:
    """The module's version (its distribution's, else __version__) and file."""
    import importlib.metadata

    mod = importlib.import_module(module)
    version = None
    for dist in importlib.metadata.packages_distributions().get(module, []) + [module]:
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"module": module, "version": version or getattr(mod, "__version__", None), "file": getattr(mod, "__file__", None)}


def _with_object(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("import"):
        request = dict(request, optimizer_object=user_object(request["optimizer"], request["import"]))
    return request


def answer(adapter: Any, message: dict[str, Any]) -> dict[str, Any]:
    op = message.get("op")
    try:
        if op == "describe":
            return {"ok": adapter.describe()}
        if op == "run":
            return {"ok": adapter.run(_with_object(decode(message["request"])))}
        if op == "defaults":
            if not hasattr(adapter, "defaults"):
                raise NotImplementedError("this adapter cannot introspect defaults")
            return {"ok": adapter.defaults(_with_object(decode(message["request"])))}
        if op == "imported":
            return {"ok": imported(message["module"])}
        return {"error": {"type": "ProtocolError", "message": f"unknown op {op!r}", "traceback": ""}}
    except NotImplementedError as exc:
        return {"unsupported": str(exc) or "not supported by this framework"}
    except BaseException as exc:  # the framework raised: report it, keep serving
        return {"error": {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}}


def serve(adapter_path: str) -> int:
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        adapter = load_adapter(adapter_path)
    except BaseException as exc:
        proto.write(json.dumps({"error": {"type": type(exc).__name__, "message": f"cannot import the adapter: {exc}", "traceback": traceback.format_exc()}}) + "\n")
        proto.flush()
        return 1
    proto.write(json.dumps({"ready": getattr(adapter, "FRAMEWORK", None)}) + "\n")
    proto.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if message.get("op") == "quit":
            break
        proto.write(json.dumps(encode(answer(adapter, message))) + "\n")
        proto.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python worker.py ADAPTER.py\n")
        sys.exit(2)
    sys.exit(serve(sys.argv[1]))
