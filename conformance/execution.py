"""Where adapters run: in this process, or in a worker process per framework.

Both hosts answer `describe()` and `run(request)` with the same `Answer`, so
the runner never knows which it has. The worker host (the default) starts
`conformance/worker.py` under a chosen Python interpreter, keeps it for the
whole run, and turns an exception into `crash` with the traceback, a dead
worker into `crash` with its exit status and the tail of its stderr, and a
case that takes longer than the per-case timeout into `crash` ("hung"),
restarting the worker for the next case. The in-process host is faster to
start and easier to debug, but a segfault there ends the run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import worker as wire
from .protocol import AdapterRequest
from .registry import entry, too_old

DEFAULT_TIMEOUT = 120.0  # seconds per case
START_TIMEOUT = 300.0  # seconds to import a framework


@dataclass(frozen=True)
class Answer:
    status: str  # "ok" | "unsupported" | "crash"
    result: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    detail: str = ""  # traceback or stderr tail
    seconds: float = 0.0


def request_key(request: dict[str, Any]) -> str:
    """A digest of everything an adapter request says (arrays by their bytes)."""
    h = hashlib.blake2b(digest_size=16)
    plain = {}
    for k, v in sorted(request.items()):
        if isinstance(v, np.ndarray):
            h.update(f"{k}:{v.dtype}:{v.shape}:".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        elif k == "sparse_values" and v is not None:
            for a in v:
                a = np.asarray(a)
                h.update(f"{k}:{a.dtype}:{a.shape}:".encode())
                h.update(np.ascontiguousarray(a).tobytes())
        else:
            plain[k] = v
    h.update(json.dumps(plain, sort_keys=True, default=repr).encode())
    return h.hexdigest()


class AnswerMemo:
    """The answers a host gave, by request: a framework computes the same
    trajectory for the same request, so a case that several cells run on one
    host (a mode's own cell and the cross cells that compare it with another
    mode draw the same cases) runs once. Kept: "ok" and "unsupported"
    answers, the last `size`; a crash or a hang runs again. A remembered
    answer comes back with `seconds` 0 (no framework time was spent)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._answers: "OrderedDict[str, Answer]" = OrderedDict()
        self.hits = 0

    def answer(self, request: dict[str, Any], run: Any) -> Answer:
        """`run()`'s answer to `request` (its wire form), or the remembered one."""
        key = request_key(request)
        hit = self._answers.get(key)
        if hit is not None:
            self._answers.move_to_end(key)
            self.hits += 1
            return replace(hit, seconds=0.0)
        answer = run()
        if answer.status in ("ok", "unsupported"):
            self._answers[key] = answer
            if len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return answer


class InProcessHost:
    """Imports the adapter module here; fastest, but a crash of the framework ends the run."""

    isolation = "inprocess"

    def __init__(self, framework: str, module: str | None = None):
        self.framework = framework
        self.module_name = module or entry(framework).adapter
        self._module = None
        self._description: dict[str, Any] | None = None
        self.python = sys.executable
        self.memo = AnswerMemo()

    def _adapter(self):
        if self._module is None:
            self._module = importlib.import_module(self.module_name)
        return self._module

    def describe(self) -> Answer:
        return _checked(self.framework, self._call({"op": "describe"}))

    def run(self, request: AdapterRequest, timeout: float | None = None) -> Answer:
        message = request.wire()
        return self.memo.answer(message, lambda: self._call({"op": "run", "request": message}))

    def defaults(self, request: dict[str, Any]) -> Answer:
        return self._call({"op": "defaults", "request": request})

    def imported(self, module: str) -> Answer:
        """Import a user's module (allowed by the user) and say which version it is."""
        return self._call({"op": "imported", "module": module})

    def _call(self, message: dict[str, Any]) -> Answer:
        t0 = time.perf_counter()
        try:
            adapter = self._adapter()
        except Exception as exc:
            return Answer("crash", reason=f"cannot import {self.module_name}: {exc}", seconds=time.perf_counter() - t0)
        reply = wire.answer(adapter, message)
        return _from_reply(reply, time.perf_counter() - t0)

    def close(self) -> None:
        pass


def _checked(framework: str, answer: Answer) -> Answer:
    """A description whose framework is older than its adapter supports is a
    start-up failure with the reason (registry.too_old)."""
    if answer.status == "ok":
        why = too_old(framework, answer.result.get("versions") or {})
        if why is not None:
            return Answer("crash", reason=why, seconds=answer.seconds)
    return answer


def adapter_file(framework: str) -> str:
    """The adapter module's file, for a worker to load by path."""
    name = entry(framework).adapter
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"no adapter module {name} in this installation")
    return spec.origin


class WorkerHost:
    """One persistent worker process serving one adapter."""

    isolation = "worker"

    def __init__(self, framework: str, python: str | None = None, adapter: str | None = None, env: dict[str, str] | None = None):
        self.framework = framework
        self.python = python or sys.executable
        self.adapter_path = adapter or adapter_file(framework)
        self.env = env
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._buffer = b""
        self._description: Answer | None = None
        self.memo = AnswerMemo()

    # -- process management -------------------------------------------------
    def _start(self) -> Answer | None:
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ, **(self.env or {}))
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self._proc = subprocess.Popen(
                [self.python, str(Path(wire.__file__).resolve()), self.adapter_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self._proc = None
            return Answer("crash", reason=f"cannot start the {self.framework} worker with {self.python}: {exc}")
        self._buffer = b""
        ready = self._read(START_TIMEOUT)
        if isinstance(ready, Answer):
            return ready
        if "error" in ready:
            err = ready["error"]
            self.close()
            return Answer("crash", reason=f"{err.get('type')}: {err.get('message')}", detail=err.get("traceback", ""))
        return None

    def _read(self, timeout: float) -> dict[str, Any] | Answer:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill()
                    return Answer("crash", reason=f"hung: no answer from the {self.framework} worker within {timeout:g} s (killed)", detail=self._stderr_tail())
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    code = self._proc.wait()
                    why = f"killed by signal {-code} ({_signame(-code)})" if code < 0 else f"exited with status {code}"
                    tail = self._stderr_tail()
                    self._proc = None
                    return Answer("crash", reason=f"the {self.framework} worker died: {why}", detail=tail)
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _stderr_tail(self, limit: int = 4000) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - limit))
            return self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    # -- the host interface -------------------------------------------------
    def describe(self) -> Answer:
        if self._description is None or self._description.status == "crash":
            self._description = _checked(self.framework, self._call({"op": "describe"}, START_TIMEOUT))
        return self._description

    def run(self, request: AdapterRequest, timeout: float | None = None) -> Answer:
        message = request.wire()
        return self.memo.answer(message, lambda: self._call({"op": "run", "request": message}, timeout or DEFAULT_TIMEOUT))

    def defaults(self, request: dict[str, Any]) -> Answer:
        return self._call({"op": "defaults", "request": request}, START_TIMEOUT)

    def imported(self, module: str) -> Answer:
        """Import a user's module (allowed by the user) and say which version it is."""
        return self._call({"op": "imported", "module": module}, START_TIMEOUT)

    def _call(self, message: dict[str, Any], timeout: float) -> Answer:
        t0 = time.perf_counter()
        if self._proc is None:
            failed = self._start()
            if failed is not None:
                return failed
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps(wire.encode(message)) + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the read below reports how the worker ended
        reply = self._read(timeout)
        if isinstance(reply, Answer):
            return Answer(reply.status, reply.result, reply.reason, reply.detail, time.perf_counter() - t0)
        return _from_reply(wire.decode(reply), time.perf_counter() - t0)

    def close(self) -> None:
        if self._proc is not None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(b'{"op": "quit"}\n')
                self._proc.stdin.flush()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._kill()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _from_reply(reply: dict[str, Any], seconds: float) -> Answer:
    if "ok" in reply:
        return Answer("ok", result=reply["ok"], seconds=seconds)
    if "unsupported" in reply:
        return Answer("unsupported", reason=reply["unsupported"], seconds=seconds)
    err = reply.get("error", {})
    return Answer(
        "crash",
        reason=f"{err.get('type', 'Error')}: {err.get('message', '')}",
        detail=err.get("traceback", ""),
        seconds=seconds,
    )


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown signal"


class TargetHost:
    """A user's target (a third-party or in-house optimizer) on the host of
    the framework that runs it: the same worker, and a description that says
    which of the user's modules it imports at which version. A module that
    fails to import makes the description a crash, so the target's cells are
    `crash` with the reason while the framework's own cells run on."""

    def __init__(self, target: str, host: Any, modules: tuple[str, ...]):
        self.target = target
        self.host = host
        self.modules = modules
        self._description: Answer | None = None

    @property
    def python(self) -> str:
        return self.host.python

    @property
    def isolation(self) -> str:
        return self.host.isolation

    def describe(self) -> Answer:
        if self._description is None or self._description.status == "crash":
            base = self.host.describe()
            if base.status != "ok":
                return base
            imports = {}
            for module in self.modules:
                got = self.host.imported(module)
                if got.status != "ok":
                    self._description = Answer("crash", reason=f"importing {module} (for {self.target}) failed: {got.reason}", detail=got.detail)
                    return self._description
                imports[module] = got.result
            result = dict(base.result, target_of=base.result.get("framework"), imports=imports)
            result["versions"] = {**(base.result.get("versions") or {}), **{m: i.get("version") for m, i in imports.items()}}
            self._description = Answer("ok", result=result)
        return self._description

    def run(self, request: AdapterRequest, timeout: float | None = None) -> Answer:
        return self.host.run(request, timeout)

    def defaults(self, request: dict[str, Any]) -> Answer:
        return self.host.defaults(request)

    def imported(self, module: str) -> Answer:
        return self.host.imported(module)

    def close(self) -> None:
        pass  # (the framework's host is closed as itself)


def make_host(framework: str, isolation: str = "worker", python: str | None = None):
    if isolation == "inprocess":
        return InProcessHost(framework)
    return WorkerHost(framework, python=python)
