"""Cells: what one column of one rule runs, and which cells a run selects.

A cell is one rule x framework x mode x device x dtype x gradient kind x
environment (`adam[torch-foreach-cpu-float32]`). A cross cell compares two
cells that differ on one axis (`Cross`): two modes of one framework
(`adam[tensorflow-eager~xla-cpu-float32]`), two devices, the sparse and the
dense form of one gradient (`-sparse~dense`), or the pinned and the candidate
environment of a side-by-side run (`@pinned~candidate`). The cell's own
fields are its first side; `cross` names the axis and the second side's
value. The id is derived from these fields for display and is never parsed
back: results and summaries store the fields (`to_json`), and
`Cell.from_json` reads them (and migrates the older form, which wrote a cross
cell as "a~b" inside the field).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping, Sequence

from .catalog import Catalog
from .dtypes import DTYPES
from .registry import FRAMEWORKS
from .spec import ModeConfig, Spec

#: how the two sides of a cross cell are shown (display only, never parsed)
SEP = "~"
#: the axes a cross cell may compare its two sides on
CROSS_AXES = ("mode", "device", "gradients", "env")
#: The environments of a side-by-side run: the run's own interpreter for a
#: framework and the candidate one (`--candidate FRAMEWORK=PYTHON`).
PINNED, CANDIDATE = "pinned", "candidate"
#: A plain cell's gradients: dense arrays, or the framework's native sparse
#: form (rows x cols parameter, some rows per step).
PLAIN_GRADIENTS = ("dense", "sparse")
#: The gradient kinds a user selects (`--gradients`): the plain ones and the
#: sparse-vs-dense oracle, as the cell ids show them.
GRADIENTS = (*PLAIN_GRADIENTS, f"sparse{SEP}dense")
#: Sparse cells run in these dtypes (what rows are touched does not depend on
#: the dtype; every dtype's arithmetic is covered by the dense cells), except
#: for modes that take sparse gradients only (torch SparseAdam): all of theirs.
SPARSE_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Cross:
    """The second side of a cross cell: the value it has on `axis` (the first
    side is the cell's own value there)."""

    axis: str
    other: str

    def __post_init__(self) -> None:
        if self.axis not in CROSS_AXES:
            raise ValueError(f"a cross cell compares on one of {', '.join(CROSS_AXES)}, not {self.axis!r}")

    def to_json(self) -> dict[str, str]:
        return {"axis": self.axis, "other": self.other}


@dataclass(frozen=True)
class Cell:
    rule: str
    framework: str
    mode: str
    device: str
    dtype: str
    gradients: str = "dense"
    #: the framework's environment: "" for the one the run uses (pinned),
    #: CANDIDATE for the candidate interpreter of a side-by-side run
    #: (`--candidate FRAMEWORK=PYTHON`)
    env: str = ""
    #: a cross cell's second side (None: a plain cell)
    cross: Cross | None = None

    # ---- the two sides ---------------------------------------------------

    @property
    def is_cross(self) -> bool:
        return self.cross is not None

    def crosses(self, axis: str) -> bool:
        return self.cross is not None and self.cross.axis == axis

    def sides(self) -> tuple["Cell", "Cell"]:
        """The two plain cells a cross cell compares."""
        if self.cross is None:
            raise ValueError(f"{self.id} is not a cross cell")
        first = replace(self, cross=None)
        return first, replace(first, **{self.cross.axis: self.cross.other})

    @property
    def first(self) -> "Cell":
        """The cell whose mode and cases a cell runs: itself, or a cross cell's first side."""
        return self.sides()[0] if self.cross is not None else self

    def side_names(self) -> tuple[str, str]:
        """What tells a cross cell's two sides apart, in words ("eager", "xla"; "pinned", "candidate")."""
        if self.cross is None:
            raise ValueError(f"{self.id} is not a cross cell")
        own = getattr(self, self.cross.axis)
        return (own or PINNED) if self.cross.axis == "env" else own, self.cross.other

    # ---- display -----------------------------------------------------------

    def label(self, axis: str) -> str:
        """The cell's value on `axis` as its id shows it: both sides on a crossed axis ("eager~xla")."""
        value = getattr(self, axis)
        if self.cross is not None and self.cross.axis == axis:
            return SEP.join(self.side_names())
        return value

    @property
    def id(self) -> str:
        return f"{self.rule}[{self.param_id}]"

    @property
    def param_id(self) -> str:
        base = f"{self.framework}-{self.label('mode')}-{self.label('device')}-{self.dtype}"
        gradients = self.label("gradients")
        base = base if gradients == "dense" else f"{base}-{gradients}"
        env = self.label("env")
        return f"{base}@{env}" if env else base

    @property
    def sparse(self) -> bool:
        """Its (first side's) gradients are sparse."""
        return self.gradients != "dense"

    def sort_key(self, targets: Mapping[str, str] | None = None) -> tuple:
        """Rule, framework (registry order, targets after theirs), mode, gradient kind, device, dtype."""
        return (
            self.rule, column_order(self.framework, targets or {}), self.label("mode"),
            GRADIENTS.index(self.label("gradients")), self.label("device"), self.dtype, self.label("env"),
        )

    # ---- JSON --------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule, "framework": self.framework, "mode": self.mode, "device": self.device,
            "dtype": self.dtype, "gradients": self.gradients,
        }
        if self.env:
            out["env"] = self.env
        if self.cross is not None:
            out["cross"] = self.cross.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Cell":
        """A cell from a record, a summary's cell or a baseline's (the older
        form of a cross cell, "a~b" in one field, is migrated)."""
        values = {f.name: data.get(f.name) for f in fields(cls) if f.name != "cross"}
        values["gradients"] = values["gradients"] or "dense"
        values["env"] = values["env"] or ""
        cross = data.get("cross")
        if isinstance(cross, Mapping):
            return cls(**values, cross=Cross(str(cross["axis"]), str(cross["other"])))
        values, legacy = migrate_legacy_cross(values)
        return cls(**values, cross=legacy)


def migrate_legacy_cross(values: Mapping[str, Any]) -> tuple[dict[str, Any], Cross | None]:
    """Fields written before cross cells were typed, when a cross cell held
    both sides in one field ("eager~xla", "cpu~cuda", "sparse~dense",
    "pinned~candidate"): the first side's fields and the `Cross`. Results,
    summaries, baselines and case files of that form still read; nothing
    writes it any more."""
    out = dict(values)
    for axis in CROSS_AXES:
        value = out.get(axis)
        if isinstance(value, str) and SEP in value:
            own, other = value.split(SEP, 1)
            out[axis] = "" if axis == "env" and own == PINNED else own
            return out, Cross(axis, other)
    return out, None


def column_order(framework: str, targets: Mapping[str, str]) -> tuple[int, str]:
    """Frameworks in registry order, each user's target after the framework running it."""
    order = list(FRAMEWORKS)
    runs_on = targets.get(framework, framework)
    return (order.index(runs_on) if runs_on in order else len(order), "" if runs_on == framework else framework)


# ---------------------------------------------------------------------------
# Selection


@dataclass(frozen=True)
class Selection:
    rules: tuple[str, ...] | None = None
    frameworks: tuple[str, ...] | None = None
    modes: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    gradients: tuple[str, ...] | None = None

    def keeps(self, cell: Cell) -> bool:
        """The cell's values as its id shows them are selected (`--devices cpu~cuda` names a cross cell)."""
        return all(
            sel is None or value in sel
            for sel, value in (
                (self.rules, cell.rule),
                (self.frameworks, cell.framework),
                (self.modes, cell.label("mode")),
                (self.devices, cell.label("device")),
                (self.dtypes, cell.dtype),
                (self.gradients, cell.label("gradients")),
            )
        )


def enumerate_cells(catalog: Catalog, selection: Selection = Selection(), candidates: Iterable[str] = ()) -> list[Cell]:
    """Every cell the specs define, filtered by `selection`, in a stable order.

    A framework in `candidates` runs side by side in two environments: each
    of its cells again as `@candidate` (judged against the reference like
    the pinned one), and each plain cell as `@pinned~candidate`, the two
    environments compared on identical cases.
    """
    cells = _enumerate_cells(catalog, selection)
    candidates = set(candidates)
    if not candidates:
        return cells
    targets = catalog.targets()
    out = []
    for cell in cells:
        out.append(cell)
        if cell.framework in candidates or targets.get(cell.framework) in candidates:
            out.append(replace(cell, env=CANDIDATE))
            if not cell.is_cross:
                out.append(replace(cell, cross=Cross("env", CANDIDATE)))
    return out


def _devices(mode: ModeConfig) -> tuple[str, ...]:
    return mode.devices or FRAMEWORKS[mode.runs_on].devices


def _enumerate_cells(catalog: Catalog, selection: Selection) -> list[Cell]:
    out = []
    for spec in catalog:
        # The sparse~dense oracle runs once per group of modes with one
        # configuration (torch forloop, not foreach; Keras eager, not function
        # or xla): the others are tied to it by the mode~mode cross-oracle and
        # checked against the reference in their own sparse cells.
        paired = {
            b
            for fw in {f for f, _ in spec.modes}
            for a, b in mode_pairs(spec, fw)
            if spec.mode(fw, a).sparse == spec.mode(fw, b).sparse  # (MXNet multi_precision is not lazy)
        }
        for (fw, mode_name), mode in spec.modes.items():
            dtypes = mode.dtypes or tuple(DTYPES)
            sparse_only = mode.gradients == "sparse"
            # (a mode without float32 and float64, e.g. float16 multi-precision, keeps its own)
            sparse_dtypes = [d for d in dtypes if d in SPARSE_DTYPES] or list(dtypes)
            kinds: list[tuple[str, Cross | None]] = [("sparse", None)]
            if not sparse_only:
                kinds = [("dense", None), ("sparse", None)]
                if mode.sparse.semantics != "unsupported" and mode_name not in paired:
                    # (otherwise its sparse cell says why; or another mode of its group has the oracle)
                    kinds.append(("sparse", Cross("gradients", "dense")))
            for gradients, cross in kinds:
                for device in _devices(mode):
                    for dtype in dtypes:
                        if gradients != "dense" and not sparse_only and dtype not in sparse_dtypes:
                            continue
                        cell = Cell(spec.rule, fw, mode_name, device, dtype, gradients, cross=cross)
                        if selection.keeps(cell):
                            out.append(cell)
        out.extend(_cross_cells(spec, selection))
    targets = catalog.targets()
    return sorted(out, key=lambda c: c.sort_key(targets))


def _cross_cells(spec: Spec, selection: Selection) -> list[Cell]:
    """Cross-oracle cells (conformance/cross.py): mode against mode, cpu against
    each other device; kept when the selection keeps both sides."""
    out = []
    frameworks = {fw for fw, _ in spec.modes}
    for fw in sorted(frameworks):
        for a, b in mode_pairs(spec, fw):
            ma, mb = spec.mode(fw, a), spec.mode(fw, b)
            for device in _devices(ma):
                if device not in _devices(mb):
                    continue
                for dtype in ma.dtypes or tuple(DTYPES):
                    if dtype not in (mb.dtypes or tuple(DTYPES)):
                        continue
                    crossed = Cell(spec.rule, fw, a, device, dtype, cross=Cross("mode", b))
                    if all(selection.keeps(c) for c in crossed.sides()):
                        out.append(crossed)
        for (f, name), mode in spec.modes.items():
            if f != fw or mode.gradients == "sparse":
                continue
            devices = _devices(mode)
            for other in devices[1:]:
                for dtype in mode.dtypes or tuple(DTYPES):
                    crossed = Cell(spec.rule, fw, name, devices[0], dtype, cross=Cross("device", other))
                    # kept with both sides, or when the selection names it (--devices cuda,cpu~cuda:
                    # the GPU cells and their cpu twins' comparison, without every cpu cell)
                    if all(selection.keeps(c) for c in crossed.sides()) or (selection.devices and selection.keeps(crossed)):
                        out.append(crossed)
    return out


def _signature(spec: Spec, mode: ModeConfig) -> tuple:
    args = tuple(
        (k, tuple(x.source for x in v) if isinstance(v, tuple) else v.source) for k, v in sorted(mode.args.items())
    )
    return (
        mode.optimizer,
        args,
        tuple(sorted(mode.expect)),
        mode.hyperparameter_dtype,
        mode.input_dtypes,
        mode.gradients,
        tuple(sorted(mode.state.items())),
    )


def mode_pairs(spec: Spec, framework: str) -> list[tuple[str, str]]:
    """(first mode, other mode) for every group of modes with one
    configuration (optimizer, arguments, declared variants, hyperparameter
    precision, gradient kind): only those are crossed. torch's foreach mode
    rounds scalars to the tensor dtype by declaration, so comparing it with
    forloop in bfloat16 would only restate that."""
    groups: dict[tuple, list[str]] = {}
    for (fw, name), mode in spec.modes.items():
        if fw == framework:
            groups.setdefault(_signature(spec, mode), []).append(name)
    return [(names[0], other) for names in groups.values() for other in names[1:]]


# ---------------------------------------------------------------------------
# Families and shards


def family(cell: Cell) -> tuple[str, str, str]:
    """The cells that draw the same cases at one seed and share their runs:
    a rule on one framework in one dtype (its modes, devices, gradient kinds
    and environments, plain and crossed)."""
    return (cell.rule, cell.framework, cell.dtype)


def shard(cells: Sequence[Cell], k: int, n: int) -> list[Cell]:
    """Shard K of N (1-based). A family (`family`) stays in one shard, so its
    cells share the framework runs and references of the cases they have in
    common (a cross cell's sides are its plain cells' runs); the families go
    largest first to the shard with the fewest cells (ties: the lowest
    shard), and a shard runs its families one after another. The split
    depends only on the set of cells selected, not on their order."""
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: K must be between 1 and N")
    families: dict[tuple[str, str, str], list[Cell]] = {}
    for cell in cells:
        families.setdefault(family(cell), []).append(cell)
    load = [0] * n
    mine: list[Cell] = []
    for key in sorted(families, key=lambda f: (-len(families[f]), zlib.crc32(repr(f).encode()), f)):
        target = min(range(n), key=lambda i: (load[i], i))
        load[target] += len(families[key])
        if target == k - 1:
            mine.extend(families[key])
    return mine


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N, e.g. 2/4; got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return k, n
