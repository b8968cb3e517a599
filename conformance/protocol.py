"""The adapter seam, written down: what a request says and what a result must hold.

The harness sends an adapter one `AdapterRequest` per case and reads one
`AdapterResult` back. On the wire (`conformance/worker.py`) both are plain
JSON objects, because an adapter runs under any interpreter (MXNet's own
environment, a candidate release) and imports nothing of the harness; these
records are the one place that says which keys those objects have, and
`AdapterResult.from_wire` is the one place that checks an answer. Every
registered framework's adapter is held to this by tests/test_adapter_contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .tolerance import Trajectory


@dataclass(frozen=True, kw_only=True)
class AdapterRequest:
    """One case for one framework mode, in the framework's own terms."""

    #: the optimizer to construct: a dotted name (`torch.optim.Adam`)
    optimizer: str
    #: native constructor arguments (a tuple-valued mapping, e.g. betas, as a list)
    args: Mapping[str, Any]
    #: the adapter's execution path (registry `modes`: forloop, eager, jit, ...)
    mode: str
    #: a device name the adapter takes (registry `devices`)
    device: str
    #: the dtype of parameters and gradients
    dtype: str
    #: initial parameters, float64 values already rounded to `dtype`
    params: np.ndarray
    #: gradients, (steps, *params.shape), float64 values rounded to `dtype`
    grads: np.ndarray
    #: the native argument that takes the learning rate (None: it cannot be set per step)
    lr_arg: str | None
    #: the learning rate of every step, when it changes over the steps
    lr_schedule: tuple[float, ...] | None
    #: the native state slots to read back after every step
    state: tuple[str, ...]
    #: sparse gradients: the rows listed at every step (a row may repeat) ...
    sparse_rows: tuple[tuple[int, ...], ...] | None = None
    #: ... and one slice per listed row, for the framework's native sparse form
    sparse_values: tuple[np.ndarray, ...] | None = None
    #: a user's optimizer: the module the worker imports (the session checked
    #: that the user allowed it) before handing the adapter the object
    imports: str | None = None

    def wire(self) -> dict[str, Any]:
        """The request as the adapters read it (worker protocol, `{"op": "run", "request": ...}`)."""
        return {
            "optimizer": self.optimizer,
            "args": {k: list(v) if isinstance(v, tuple) else v for k, v in self.args.items()},
            "mode": self.mode,
            "device": self.device,
            "dtype": self.dtype,
            "params": self.params.copy(),  # an in-process adapter must not touch the case
            "grads": self.grads.copy(),
            "lr_arg": self.lr_arg,
            "lr_schedule": list(self.lr_schedule) if self.lr_schedule is not None else None,
            "state": list(self.state),
            "sparse_rows": [list(r) for r in self.sparse_rows] if self.sparse_rows is not None else None,
            "sparse_values": list(self.sparse_values) if self.sparse_values is not None else None,
            "import": self.imports,
        }


@dataclass(frozen=True)
class AdapterResult:
    """What an adapter computed: the parameters after every step, and each
    requested state slot it can read, by its native name."""

    params: np.ndarray  # (steps, *shape), float64
    state: Mapping[str, np.ndarray]  # native slot -> (steps, *shape), float64

    @classmethod
    def from_wire(cls, result: Mapping[str, Any], steps: int, shape: tuple[int, ...]) -> "AdapterResult":
        """Checks an adapter's answer; ValueError, KeyError or TypeError says what is malformed."""
        params = np.asarray(result["params"], dtype=np.float64)
        if params.shape != (steps,) + tuple(shape):
            raise ValueError(f"the adapter returned parameters of shape {params.shape}, expected {(steps,) + tuple(shape)}")
        state = result.get("state") or {}
        if not isinstance(state, Mapping):
            raise TypeError(f"the adapter's state is a {type(state).__name__}, not a mapping of slot names to arrays")
        return cls(params, {str(k): np.asarray(v, dtype=np.float64) for k, v in state.items()})

    def canonical(self, slots: Mapping[str, str]) -> Trajectory:
        """In the rule's names: `slots` maps a native slot to a canonical one
        (a spec's `state`; "-m" is the canonical slot negated back); a slot
        the spec does not map is left out."""
        state = {}
        for native, values in self.state.items():
            canonical = slots.get(native)
            if canonical is None:
                continue
            if canonical.startswith("-"):
                canonical, values = canonical[1:], -values
            state[canonical] = values
        return Trajectory(self.params, state)
