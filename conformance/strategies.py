"""Hypothesis strategies derived from a spec: cases for one cell.

Everything a case needs is drawn in an order that shrinks well: the number
of steps first (towards 1), then the shape (one of `SHAPES`, towards a scalar),
then the hyperparameters (towards the canonical defaults), then
the values (per tensor a kind and a numpy seed, towards plain numbers in
[-2, 2]).

- Hyperparameters come from each one's `domain` (log scale where declared)
  with priority for the special values: zero and the others the spec lists,
  the canonical default and the framework's native default.
- Values have edge cases per tensor: zeros (a zero gradient step), tiny and
  huge magnitudes, mixed signs, exact small numbers and subnormals, with ranges per dtype chosen
  so that the ordinary math of the rules (g*g) stays inside the format
  (float16 overflows at 65504: no "huge" float16 gradient beyond 100).
- Part of the examples carry a per-step learning rate (it exposes where a
  framework keeps lr: inside a momentum buffer or outside).
- Sparse cases (sparse cells, and every case of a mode that takes sparse
  gradients only) have a 2-d parameter (rows x cols) and, per step, the rows
  the gradient lists: none, all of them, or some, with priority for the
  first two; where the framework's sparse form allows it, some rows are
  listed twice with a slice each (the framework must sum them). A row is
  listed at most twice, so the summed gradient is one correctly rounded
  addition, whatever order a framework adds in.
- Options a framework does not support are mostly repaired (the names in the
  firing `unsupported` condition go back to their defaults) so that most
  examples run; one in sixteen is kept as drawn, to exercise the skip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from .case import Case
from .dtypes import round_to
from .registry import FRAMEWORKS
from .spec import ModeConfig, Spec


def settle_local_constants(adapters: tuple[str, ...] = ()) -> None:
    """Make the cases a seed draws depend on the seed and the specs alone.

    Hypothesis draws some values from constants it collects out of the local
    (not site-packages) modules loaded in the process
    (hypothesis/internal/conjecture/providers.py `_get_local_constants`). An
    editable install makes this package local, and so are a user's tests, so
    the cases of a seed depended on which modules were loaded (measured: four
    more modules changed every drawn case of a seeded cell) and on every
    constant in their source: after one session's changes to the harness the
    ci profile's main job at seed 0 drew other cases, and the gate against
    the committed baseline failed 24 cells that nothing but the draws had
    changed. The local pool is therefore emptied (hypothesis' own constants
    stay; the specs' special values are drawn explicitly by `hyperparameter`).
    Should a hypothesis release move that internal, every module of this
    package (and the in-process `adapters` named) is loaded instead, which
    keeps the draws the same run to run for one version of the source.
    """
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # pragma: no cover - another hypothesis layout
        providers = None
    if providers is not None and hasattr(providers, "_get_local_constants"):
        none = Constants()
        providers._get_local_constants = lambda: none
        cache = getattr(providers, "CONSTANTS_CACHE", None)
        if cache is not None and hasattr(cache, "cache"):
            cache.cache.clear()
        return
    import importlib  # pragma: no cover
    import pkgutil

    from . import __path__ as package_path

    for info in pkgutil.iter_modules(package_path):
        if info.name not in ("__main__", "adapters"):
            importlib.import_module(f"{__package__}.{info.name}")
    for entry in FRAMEWORKS.values():
        if entry.script:
            importlib.import_module(entry.script)
    for name in adapters:
        importlib.import_module(FRAMEWORKS[name].adapter)


@dataclass(frozen=True)
class Limits:
    max_steps: int = 20
    max_size: int = 32  # elements per tensor


# Magnitude ranges (log10 low, log10 high) of the edge-case tensors.
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "float64": {"tiny": (-30, -6), "huge": (3, 6), "subnormal": (-320, -309)},
    "float32": {"tiny": (-30, -6), "huge": (3, 6), "subnormal": (-44, -39)},
    "bfloat16": {"tiny": (-30, -6), "huge": (3, 6), "subnormal": (-40, -39)},
    "float16": {"tiny": (-4, -2), "huge": (1, 2), "subnormal": (-7, -4.3)},
}
_KINDS = ("normal", "zeros", "mixed", "tiny", "huge")


def _values(rng: np.random.Generator, kind: str, dtype: str, size: int) -> np.ndarray:
    """`size` values of one tensor kind (before rounding to `dtype`)."""
    ranges = _RANGES[dtype]

    def magnitude(lo: float, hi: float, n: int) -> np.ndarray:
        return np.where(rng.random(n) < 0.5, -1.0, 1.0) * 10.0 ** rng.uniform(lo, hi, n)

    if kind == "normal":
        return rng.uniform(-2.0, 2.0, size)
    if kind != "mixed":
        return magnitude(*ranges[kind], size)
    # each element one of: a plain number, an exact small one (0, +-0.5, +-1,
    # +-2: ties and exact products), tiny, huge, subnormal
    pick = rng.integers(0, 5, size)
    out = rng.uniform(-2.0, 2.0, size)
    out = np.where(pick == 1, rng.choice(_EXACT, size), out)
    for k, name in ((2, "tiny"), (3, "huge"), (4, "subnormal")):
        out = np.where(pick == k, magnitude(*ranges[name], size), out)
    return out


_EXACT = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0])

#: How cases are drawn from a seed. Bump it whenever the same seed draws other
#: cases (1: every tensor element through hypothesis; 2: a tensor kind and a
#: numpy seed; 3: the shape from `SHAPES`). A run records it, and the gate does not compare the variant
#: sets and precision findings of a baseline drawn otherwise (they describe
#: other cases), only outcomes and defaults.
DRAW_SCHEME = 3


_KIND_OF = {True: st.sampled_from(_KINDS), False: st.sampled_from(tuple(k for k in _KINDS if k != "zeros"))}
_SEED = st.integers(0, 2**32 - 1)


def tensor(draw, shape: tuple[int, ...], dtype: str, allow_zero: bool = True) -> np.ndarray:
    """One tensor of `shape`, rounded to `dtype` (held as float64); `draw`
    is a composite strategy's.

    Hypothesis draws the tensor's kind and a seed; numpy draws the values
    from them. Drawing every element through hypothesis cost about 30 ms per
    case (two thirds of a torch cell's time, measured with cProfile over the
    torch float32 and bfloat16 cells); this is two draws per tensor.
    A shrunk case keeps random-looking values (the seed shrinks to 0, the
    kind to plain numbers in [-2, 2]); steps, shape and hyperparameters
    shrink as before.
    """
    kind = draw(_KIND_OF[allow_zero])
    if kind == "zeros":
        return np.zeros(shape)
    size = int(np.prod(shape, dtype=np.int64))
    a = _values(np.random.default_rng(draw(_SEED)), kind, dtype, size).reshape(shape)
    return round_to(a, dtype)


#: The shapes cases are drawn from (those of the spec's ranks with at most
#: `Limits.max_size` elements). A list, not any shape: every new shape costs a
#: framework that compiles per shape a compilation (JAX's eager primitives
#: and its jit, XLA; measured: an eager Adam case of 10 steps 881 ms on a new
#: shape, 65 ms on a repeated one), and free shapes cost a compilation nearly
#: every case, while the shapes that tell update rules apart are few: a
#: scalar (0-d tensors take other paths), one element, lengths on both sides
#: of the vector widths of fused and vectorized kernels (7, 8, 16, 17, 31,
#: 32), matrices long, wide, square and with a unit dimension (Adafactor
#: factors the last two dimensions, Muon orients by the longer one, LAMB
#: and Lion reduce), and 3-d tensors. Free drawing also gave a scalar in more
#: than half of the cases (656 of JAX eager's 1,179 in a ci run); drawn from
#: this list, every class comes up. The last three need `--max-size 64`.
SHAPES: tuple[tuple[int, ...], ...] = (
    (),
    (1,), (2,), (3,), (7,), (8,), (16,), (17,), (31,), (32,),
    (1, 1), (1, 7), (7, 1), (2, 3), (3, 2), (4, 4), (5, 6), (6, 5), (4, 8), (8, 4), (2, 16), (16, 2),
    (1, 1, 1), (2, 1, 3), (1, 3, 2), (2, 3, 4), (4, 3, 2), (2, 2, 8),
    (64,), (8, 8), (4, 4, 4),
)


def shape_menu(max_size: int, ranks: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[tuple[int, ...], ...]:
    """The shapes of SHAPES of the `ranks` given with at most `max_size` elements
    (the all-ones shape of each rank whatever `max_size`: never empty)."""
    return tuple(s for s in SHAPES if len(s) in ranks and math.prod(s) <= max(max_size, 1))


def shapes(max_size: int, ranks: tuple[int, ...] = (0, 1, 2, 3)) -> st.SearchStrategy[tuple[int, ...]]:
    """One shape of `shape_menu(max_size, ranks)` (shrinking towards the first: a scalar where allowed)."""
    return st.sampled_from(shape_menu(max_size, ranks))


def hyperparameter(spec: Spec, name: str, native_default: Any = None) -> st.SearchStrategy[Any]:
    hp = spec.hyperparameters[name]
    if isinstance(hp.default, bool):
        return st.booleans()
    specials: list[float] = [float(hp.default)]
    dom = hp.domain
    if dom is not None:
        specials += [float(v) for v in dom.special]
    if isinstance(native_default, (int, float)) and not isinstance(native_default, bool):
        specials.append(float(native_default))
    specials = list(dict.fromkeys(specials))
    if dom is None:
        return st.sampled_from(specials)
    if dom.log:
        ranged = st.floats(math.log10(dom.low), math.log10(dom.high)).map(lambda e: float(10.0**e))
    else:
        ranged = st.floats(dom.low, dom.high, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from(specials), ranged)


def hyperparameters(spec: Spec, mode: ModeConfig) -> st.SearchStrategy[dict[str, Any]]:
    each = {name: hyperparameter(spec, name, mode.defaults.get(name)) for name in spec.hyperparameters}
    keep = st.integers(0, 15)

    @st.composite
    def draw_hyperparameters(draw) -> dict[str, Any]:
        hp = {name: draw(strategy) for name, strategy in each.items()}
        keep_as_drawn = draw(keep) == 15
        if not keep_as_drawn:
            hp = repair(spec, mode, hp)
        return hp

    return draw_hyperparameters()


def repair(spec: Spec, mode: ModeConfig, hp: dict[str, Any]) -> dict[str, Any]:
    """Reset the names of firing `unsupported` conditions to defaults (canonical, then native)."""
    hp = dict(hp)
    for defaults in (spec.defaults, {**spec.defaults, **mode.defaults}):
        fired = [when for when, _ in mode.unsupported if when is not None and bool(when(spec.resolve(hp)))]
        if not fired:
            break
        for when in fired:
            for name in when.names:
                if name in hp:
                    hp[name] = defaults[name]
    return hp


_TOUCHED = st.sampled_from(("some", "all", "some", "some", "empty", "some", "all", "some"))


@st.composite
def touched_rows(draw, n: int, duplicates: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(rows listed once, rows listed twice) of one step of an n-row parameter."""
    # some rows (5 in 8), every row (2 in 8), no row (1 in 8): an empty step in
    # every few cases, not in nearly all of them
    kind = draw(_TOUCHED)
    if kind == "empty":
        return (), ()
    if kind == "all":
        rows = list(range(n))
        if draw(st.booleans()):
            rows = draw(st.permutations(rows))  # in any order
    else:
        rows = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    twice: list[int] = []
    if duplicates and rows and draw(st.booleans()):
        twice = draw(st.lists(st.sampled_from(rows), unique=True, min_size=1, max_size=len(rows)))
    return tuple(rows), tuple(twice)


def cases(
    spec: Spec, mode: ModeConfig, *, device: str, dtype: str, limits: Limits = Limits(), sparse: bool = False
) -> st.SearchStrategy[Case]:
    """Cases for the cell (spec.rule, mode.framework, mode.mode, device, dtype); sparse gradients when `sparse`.

    The strategies it draws from are built once here, not per case (building
    them per draw cost a third of the drawing).
    """
    sparse = sparse or mode.gradients == "sparse"
    step_count = st.integers(1, limits.max_steps)
    # a sparse case's parameter is a matrix: rows x cols
    shape_of = shapes(limits.max_size, (2,) if sparse else spec.ranks)
    hps = hyperparameters(spec, mode)
    lr = hyperparameter(spec, "lr", mode.defaults.get("lr")) if mode.lr_arg is not None else None
    scheduled = st.booleans()

    @st.composite
    def draw_case(draw) -> Case:
        steps = draw(step_count)
        shape = draw(shape_of)
        hp = draw(hps)
        lr_schedule = None
        if lr is not None and draw(scheduled):
            lr_schedule = tuple(draw(st.lists(lr, min_size=steps, max_size=steps)))
        return _case(draw, spec, mode, device, dtype, steps, shape, hp, lr_schedule, sparse)

    return draw_case()


def _case(draw, spec: Spec, mode: ModeConfig, device: str, dtype: str, steps: int, shape: tuple[int, ...], hp: dict[str, Any], lr_schedule, sparse: bool) -> Case:
    """The tensors of a case whose steps, shape and hyperparameters are drawn."""
    params = tensor(draw, shape, dtype, allow_zero=True)
    grads = []
    sparse_rows: list[tuple[int, ...]] | None = [] if sparse else None
    slices: list[np.ndarray] = []
    for _ in range(steps):
        g = tensor(draw, shape, dtype)
        if sparse:
            rows, twice = draw(touched_rows(shape[0], mode.sparse.duplicates))
            keep = np.zeros(shape[0], dtype=bool)
            keep[list(rows)] = True
            g = np.where(keep[:, None], g, 0.0)
            listed = rows + twice
            values = g[list(listed)].reshape((len(listed),) + shape[1:])
            if twice:
                # the second slice of each repeated row; the row's gradient is the sum
                values[len(rows):] = tensor(draw, (len(twice),) + shape[1:], dtype)
                np.add.at(g, list(twice), values[len(rows):])
                g = round_to(g, dtype)
            sparse_rows.append(listed)
            slices.append(values)
        grads.append(g)
    duplicated = sparse and any(len(set(r)) != len(r) for r in sparse_rows)
    return Case(
        rule=spec.rule,
        dtype=dtype,
        params=params,
        grads=np.stack(grads),
        hyperparameters=hp,
        framework=mode.framework,
        mode=mode.mode,
        device=device,
        lr_schedule=lr_schedule,
        sparse_rows=tuple(sparse_rows) if sparse_rows is not None else None,
        sparse_values=tuple(slices) if duplicated else None,
    )
