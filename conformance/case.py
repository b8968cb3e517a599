"""The Case: everything needed to replay one example anywhere.

A case file is JSON (see README, "Case files"). Floats are kept exactly:
JSON numbers written by Python round-trip float64 bit for bit, and the
inputs are rounded to the case dtype once, here, so the kernel and every
framework start from the same values.
"""

from __future__ import annotations

import re

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError

from .cells import PLAIN_GRADIENTS, Cross, migrate_legacy_cross
from .dtypes import DTYPES, round_to
from .registry import FRAMEWORKS, REFERENCE
from .yamlsource import SourceError, format_path


class CaseError(SourceError):
    """A case that cannot be replayed, located by file and key path."""


class _CrossModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    axis: str
    other: str


class _CaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str
    framework: str = REFERENCE
    variant: str | list[str] | None = None
    mode: str | None = None
    device: str | None = None
    dtype: str
    hyperparameters: dict[str, StrictBool | float] = {}
    params: Any
    grads: list[Any] | None = None
    lr_schedule: list[float] | None = None
    sparse_rows: list[list[StrictInt]] | None = None
    sparse_values: list[list[Any]] | None = None
    gradients: str | None = None
    cross: _CrossModel | None = None
    seed: int | None = None


@dataclass(frozen=True, eq=False)
class Case:
    rule: str
    dtype: str
    params: np.ndarray  # initial parameters, float64, already rounded to `dtype`
    grads: np.ndarray  # (steps, *params.shape), float64, rounded to `dtype`
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    framework: str = REFERENCE
    variant: tuple[str, ...] = ()
    mode: str | None = None
    device: str | None = None
    lr_schedule: tuple[float, ...] | None = None
    # Per step, the rows the sparse gradient lists (a row may be listed more
    # than once: its slices are summed) ...
    sparse_rows: tuple[tuple[int, ...], ...] | None = None
    # ... and, when a row repeats, one slice per listed row (float64, rounded
    # to `dtype`); `grads` is then their sum, rounded once to `dtype`.
    sparse_values: tuple[np.ndarray, ...] | None = None
    # "dense" or "sparse" (default: sparse where sparse_rows are given)
    gradients: str | None = None
    seed: int | None = None
    # replay as a cross cell (conformance/cross.py): the second side's value
    # on one axis (`{"axis": "mode", "other": "xla"}`; gradients: "dense" for
    # the sparse-vs-dense oracle)
    cross: Cross | None = None

    @property
    def steps(self) -> int:
        return int(self.grads.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.params.shape)

    @cached_property
    def content_digest(self) -> str:
        """A digest of what the rule computes from: rule, dtype, tensors,
        hyperparameters, learning-rate schedule and sparse rows; not the
        framework, mode or device that runs it. Cells that draw the same case
        share the references judged from it (runner)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.rule, self.dtype, sorted((k, repr(v)) for k, v in self.hyperparameters.items()),
                       self.lr_schedule, self.sparse_rows, self.params.shape, self.grads.shape)).encode())
        for a in (self.params, self.grads, *(self.sparse_values or ())):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()

    # ---- JSON -----------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "<case>") -> "Case":
        def err(path, message):
            return CaseError(source, tuple(path), None, message)

        if not isinstance(data, dict):
            raise err((), "a case must be a JSON object")
        try:
            m = _CaseModel.model_validate(data)
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            path = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in {"float", "bool", "str"})))
            kind = e["type"]
            msg = {"extra_forbidden": "unknown key", "missing": "missing required key"}.get(kind, e["msg"])
            raise err(path, msg) from None
        sides, cross = _sides(m, err)
        if m.framework != REFERENCE and m.framework not in FRAMEWORKS and not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", m.framework):
            # (a user's target has a name of its own: the spec that declares it is checked at replay)
            raise err(("framework",), f"unknown framework {m.framework!r} (known: {REFERENCE}, {', '.join(FRAMEWORKS)}, or a target's name)")
        if m.dtype not in DTYPES:
            raise err(("dtype",), f"unknown dtype {m.dtype!r} (known: {', '.join(DTYPES)})")
        variant = (m.variant,) if isinstance(m.variant, str) else tuple(m.variant or ())
        if variant and m.framework != REFERENCE:
            raise err(("variant",), "a variant can only be asked of the reference kernel; frameworks run what they run")
        params = _array(m.params, ("params",), err)
        values = _slices(m, params, err)
        if m.grads is None:
            if values is None:
                raise err(("grads",), "missing required key")
            grads = [_scatter_sum(params.shape, r, v, m.dtype) for r, v in zip(m.sparse_rows, values) if _rows_ok(r, params)]
            if len(grads) != len(values):
                bad = next(i for i, r in enumerate(m.sparse_rows) if not _rows_ok(r, params))
                raise err(("sparse_rows", bad), f"a row is outside 0..{params.shape[0] - 1 if params.ndim else 0}")
        else:
            grads = []
            for i, g in enumerate(m.grads):
                a = _array(g, ("grads", i), err)
                if a.shape != params.shape:
                    raise err(("grads", i), f"gradient shape {a.shape} differs from params shape {params.shape}")
                grads.append(a)
        if not grads:
            raise err(("grads",), "at least one step (one gradient) is required")
        grads_arr = np.stack(grads)
        steps = len(grads)
        lr = None
        if m.lr_schedule is not None:
            if len(m.lr_schedule) != steps:
                raise err(("lr_schedule",), f"{len(m.lr_schedule)} learning rates for {steps} steps")
            lr = tuple(float(x) for x in m.lr_schedule)
        rows = _rows(m, params, grads_arr, values, err) if m.sparse_rows is not None else None
        return cls(
            rule=m.rule,
            dtype=m.dtype,
            params=round_to(params, m.dtype),
            grads=round_to(grads_arr, m.dtype),
            hyperparameters=dict(m.hyperparameters),
            framework=m.framework,
            variant=variant,
            mode=sides["mode"],
            device=sides["device"],
            lr_schedule=lr,
            sparse_rows=rows,
            sparse_values=tuple(values) if values is not None else None,
            gradients=sides["gradients"],
            seed=m.seed,
            cross=cross,
        )

    @classmethod
    def load(cls, path: str | Path) -> "Case":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise CaseError(str(path), (), None, f"cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise CaseError(str(path), (), exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "framework": self.framework}
        if self.variant:
            out["variant"] = list(self.variant)
        if self.mode is not None:
            out["mode"] = self.mode
        if self.device is not None:
            out["device"] = self.device
        out["dtype"] = self.dtype
        out["hyperparameters"] = dict(self.hyperparameters)
        out["params"] = self.params.tolist()
        out["grads"] = self.grads.tolist()
        if self.lr_schedule is not None:
            out["lr_schedule"] = list(self.lr_schedule)
        if self.sparse_rows is not None:
            out["sparse_rows"] = [list(r) for r in self.sparse_rows]
        if self.sparse_values is not None:
            out["sparse_values"] = [v.tolist() for v in self.sparse_values]
        if self.gradients is not None:
            out["gradients"] = self.gradients
        if self.cross is not None:
            out["cross"] = self.cross.to_json()
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    # ---- sparse gradients -------------------------------------------------

    def slices(self, step: int) -> tuple[tuple[int, ...], np.ndarray]:
        """The step's sparse gradient as (row indices, one slice per index), in listed order."""
        if self.sparse_rows is None:
            raise ValueError("this case has dense gradients")
        rows = self.sparse_rows[step]
        if self.sparse_values is not None:
            return rows, self.sparse_values[step]
        return rows, self.grads[step][list(rows)].reshape((len(rows),) + self.shape[1:])

    @cached_property
    def slice_terms(self) -> "SliceTerms | None":
        """What the slices of a case that lists a row twice add to its summed
        gradients, per step (None when no row repeats: the gradients say all)."""
        if self.sparse_values is None:
            return None
        squares, repeated_abs, smallest, abs_sums = [], [], [], []
        for step in range(self.steps):
            rows, values = self.slices(step)
            index = list(rows)
            sq, ab, small = np.zeros(self.shape), np.zeros(self.shape), np.full(self.shape, np.inf)
            if index:
                np.add.at(sq, index, values * values)
                np.add.at(ab, index, np.abs(values))
                np.minimum.at(small, index, np.where(values != 0, values * values, np.inf))
            abs_sums.append(ab.copy())  # |slices| summed, every listed row
            if index:
                ab[np.bincount(index, minlength=self.shape[0]) < 2] = 0.0  # repeated rows only
            squares.append(sq)
            repeated_abs.append(ab)
            smallest.append(small)
        return SliceTerms(tuple(squares), tuple(repeated_abs), tuple(smallest), tuple(abs_sums))


@dataclass(frozen=True, eq=False)
class SliceTerms:
    """Per step, for a sparse gradient that lists a row twice (float64, shaped like params):

    - `squares`: the sum over the slices of slice*slice, what equations read as
      `slice_sq` (g*g but where a row repeats: a*a + b*b, not (a + b)^2);
    - `repeated_abs`: the sum of |slice| on repeated rows (0 elsewhere), how
      large the terms are that a framework may add up in its own order after
      linear operations (Keras divides slice by slice);
    - `smallest_squares`: the smallest nonzero square of one slice (inf where
      none): a framework that squares slice by slice takes each through the
      dtype's range on its own;
    - `abs_sums`: the sum over the slices of |slice|, what equations read as
      `slice_abs` (Keras takes abs slice by slice, as it squares).
    """

    squares: tuple[np.ndarray, ...]
    repeated_abs: tuple[np.ndarray, ...] | None = None
    smallest_squares: tuple[np.ndarray, ...] | None = None
    #: the sum over the slices of |slice|, what equations read as `slice_abs`
    #: (|g| but where a row repeats: |a| + |b|, not |a + b|)
    abs_sums: tuple[np.ndarray, ...] | None = None


def _rows_ok(rows: list[int], params: np.ndarray) -> bool:
    return params.ndim >= 1 and all(0 <= r < params.shape[0] for r in rows)


def _scatter_sum(shape: tuple[int, ...], rows: Any, values: np.ndarray, dtype: str) -> np.ndarray:
    """The dense gradient of one step: the slices summed per row in float64, rounded once to `dtype`
    (exact IEEE addition for a row listed twice; strategies list a row at most twice)."""
    out = np.zeros(shape)
    if len(rows):
        np.add.at(out, list(rows), values)
    return round_to(out, dtype)


def _array(value: Any, path, err) -> np.ndarray:
    try:
        a = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise err(path, "expected a number or a nested list of numbers of one rectangular shape") from None
    return a


__all__ = ["Case", "CaseError", "SliceTerms", "format_path"]


def _sides(m: _CaseModel, err: Any) -> tuple[dict[str, Any], Cross | None]:
    """The case's own mode, device and gradients, and the second side of a
    cross case (`cross`, or the older form: "eager~xla" in one field)."""
    sides, cross = migrate_legacy_cross({"mode": m.mode, "device": m.device, "gradients": m.gradients})
    if m.cross is not None:
        if cross is not None:
            raise err((cross.axis,), f"a cross case names its second side in `cross` only, not as {getattr(m, cross.axis)!r}")
        if m.cross.axis not in ("mode", "device", "gradients"):
            raise err(("cross", "axis"), f"a case crosses mode, device or gradients, not {m.cross.axis!r}")
        cross = Cross(m.cross.axis, m.cross.other)
    if sides["gradients"] is not None and sides["gradients"] not in PLAIN_GRADIENTS:
        raise err(("gradients",), f"unknown gradient kind {m.gradients!r} (known: {', '.join(PLAIN_GRADIENTS)})")
    if cross is not None and cross.axis == "gradients":
        if (sides["gradients"], cross.other) != ("sparse", "dense"):
            raise err(("cross",), "gradients cross as the sparse-vs-dense oracle only: gradients sparse, other dense")
        if m.sparse_rows is None:
            raise err(("cross",), "the sparse~dense oracle needs sparse_rows")
    return sides, cross


def _slices(m: _CaseModel, params: np.ndarray, err: Any) -> list[np.ndarray] | None:
    """`sparse_values`: per step one slice per listed row, rounded to the dtype."""
    if m.sparse_values is None:
        return None
    if m.sparse_rows is None:
        raise err(("sparse_values",), "sparse_values need sparse_rows (the row of every slice)")
    if len(m.sparse_values) != len(m.sparse_rows):
        raise err(("sparse_values",), f"{len(m.sparse_values)} steps of slices for {len(m.sparse_rows)} row lists")
    values = []
    for i, (step_values, step_rows) in enumerate(zip(m.sparse_values, m.sparse_rows)):
        a = np.zeros((len(step_rows),) + params.shape[1:]) if not step_values else _array(step_values, ("sparse_values", i), err)
        if a.shape != (len(step_rows),) + params.shape[1:]:
            raise err(
                ("sparse_values", i),
                f"slices of shape {a.shape}, expected {(len(step_rows),) + params.shape[1:]} (one row per listed index)",
            )
        values.append(round_to(a, m.dtype))
    return values


def _rows(m: _CaseModel, params: np.ndarray, grads: np.ndarray, values: list[np.ndarray] | None, err: Any) -> tuple[tuple[int, ...], ...]:
    """`sparse_rows`, checked against the parameter, the gradients and the slices."""
    steps = len(grads)
    if params.ndim < 1:
        raise err(("sparse_rows",), "sparse rows need a parameter with at least one dimension")
    if len(m.sparse_rows) != steps:
        raise err(("sparse_rows",), f"{len(m.sparse_rows)} row sets for {steps} steps")
    n = params.shape[0]
    for i, step_rows in enumerate(m.sparse_rows):
        for j, r in enumerate(step_rows):
            if not 0 <= r < n:
                raise err(("sparse_rows", i, j), f"row {r} is outside 0..{n - 1}")
        if values is None and len(set(step_rows)) != len(step_rows):
            raise err(("sparse_rows", i), "a row is listed twice: give its slices in sparse_values")
        untouched = np.ones(n, dtype=bool)
        untouched[list(step_rows)] = False
        if np.any(grads[i][untouched] != 0):
            raise err(("grads", i), "a row not listed in sparse_rows has a nonzero gradient")
        if values is not None:
            total = _scatter_sum(params.shape, step_rows, values[i], m.dtype)
            if not np.array_equal(total, round_to(grads[i], m.dtype)):
                raise err(("grads", i), "differs from the sum of the step's sparse_values (rounded to the dtype)")
    return tuple(tuple(r) for r in m.sparse_rows)
