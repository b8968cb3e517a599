"""The compiled rule: one spec file, validated into a frozen `Spec`.

A spec is the single source of truth for a rule's math (hyperparameters,
state slots, the canonical equations and named variants) and for how the
rule maps onto each framework. Files are read with the safe YAML loader,
checked against a pydantic model (structure and types) and then against the
rule's own names (every equation, mapping and condition is compiled by
`conformance.expr`; unknown names are errors). Any problem raises one
`SourceError` naming the file, the key path and the line, and nothing is
half-loaded. What a file may say is `conformance.specschema`; how it is read
and compiled, `conformance.specload`.

Names inside a spec:
- `p` the parameter, `g` the gradient of this step, `t` the 1-based step,
  `lr` the learning rate of this step (a per-step schedule overrides the
  hyperparameter), plus the rule's hyperparameters and state slots;
- an equation assigns each name at most once per step; before its
  assignment a state slot or `p` reads the previous step's value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from .expr import Equation, Expression
from .specschema import FrameworkModel, Hyperparameter, KnownIssue, SparseDecl, StateSlot, ToleranceModel



@dataclass(frozen=True)
class Variant:
    name: str
    explain: str
    cite: str
    equations: tuple[tuple[str, Expression], ...]
    sparse: str | None  # "lazy" makes untouched sparse rows keep params and state
    state_init: tuple[tuple[str, Expression], ...] = ()
    precision: bool = False  # a lower precision of the framework's, not a different rule


#: Rule-independent variant served for every spec by the kernel.
LAZY = Variant(
    name="lazy",
    explain=(
        "sparse gradients update only the rows they touch: untouched rows keep their"
        " parameters and every state slot (no momentum, decay or weight decay there)"
    ),
    cite=(
        "torch/optim/sparse_adam.py SparseAdam (torch/optim/_functional.py sparse_adam);"
        " mxnet/optimizer/optimizer.py SGD/Adam lazy_update;"
        " tensorflow/python/training/adam.py AdamOptimizer._apply_sparse_shared"
    ),
    equations=(),
    sparse="lazy",
)


@dataclass(frozen=True)
class ModeConfig:
    """One framework mode, with the framework's fields merged in."""

    framework: str  # the column: a framework's name, or a user's target's
    mode: str
    optimizer: str
    source: str
    args: dict[str, Any]  # native name -> Expression | tuple[Expression, ...]
    state: dict[str, str]  # native slot -> canonical slot, "-slot" when stored negated
    defaults: dict[str, Any]
    expect: tuple[str, ...]
    unsupported: tuple[tuple[Expression | None, str], ...]
    sparse: SparseDecl
    devices: tuple[str, ...] | None
    dtypes: tuple[str, ...] | None
    note: str | None
    gradients: str = "dense"
    hyperparameter_dtype: str = "float64"
    known_issues: tuple[KnownIssue, ...] = ()
    known_issue_whens: tuple[Expression | None, ...] = ()  # each known issue's `when`, compiled
    sparse_unsupported: tuple[tuple[Expression | None, str], ...] = ()  # sparse.unsupported, compiled
    sparse_lazy_when: Expression | None = None  # sparse.lazy_when, compiled
    input_dtypes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (hyperparameter, roundings) as the framework stores it
    adapter: str = ""  # the registered framework whose adapter runs it ("" : `framework` itself)
    #: the top-level module of a user's optimizer (not the framework's own):
    #: imported only when the user allows it (`--allow-import`)
    imports: str | None = None
    file: str = ""  # the spec file that declares this mode

    @property
    def runs_on(self) -> str:
        """The registered framework whose adapter (and worker) runs this mode."""
        return self.adapter or self.framework

    def known_issue(
        self,
        device: str,
        dtype: str,
        hyperparameters: dict[str, Any] | None = None,
        *,
        sparse: bool = False,
        error: str | None = None,
    ) -> KnownIssue | None:
        """The declared issue that explains a divergence (or, given the `error`
        of a crash, the one whose `raises` text it contains), or None."""
        for issue, when in zip(self.known_issues, self.known_issue_whens or (None,) * len(self.known_issues)):
            if (issue.devices is None or device in issue.devices) and (issue.dtypes is None or dtype in issue.dtypes):
                if when is not None and (hyperparameters is None or not bool(when(hyperparameters))):
                    continue
                if issue.gradients is not None and issue.gradients != ("sparse" if sparse else "dense"):
                    continue
                texts = [issue.raises] if isinstance(issue.raises, str) else issue.raises
                if (texts is None) != (error is None) or (error is not None and not any(t in error for t in texts)):
                    continue
                return issue
        return None

    @property
    def lr_arg(self) -> str | None:
        """The native argument that carries `lr` itself (set per step by a schedule)."""
        for native, value in self.args.items():
            if not isinstance(value, tuple) and value.source == "lr":
                return native
        return None

    def native_args(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """The framework's constructor arguments for canonical hyperparameters."""
        out: dict[str, Any] = {}
        for native, value in self.args.items():
            if isinstance(value, tuple):
                out[native] = tuple(_plain(v(hyperparameters)) for v in value)
            else:
                out[native] = _plain(value(hyperparameters))
        return out

    def unsupported_reason(self, hyperparameters: dict[str, Any], sparse: bool = False) -> str | None:
        """Why the mode cannot run these hyperparameters (with sparse gradients, when `sparse`), or None."""
        if sparse and self.sparse.semantics == "unsupported":
            return f"{self.optimizer} takes no sparse gradients: {self.sparse.note or 'declared unsupported'}".rstrip()
        for when, reason in self.unsupported + (self.sparse_unsupported if sparse else ()):
            if when is None or bool(when(hyperparameters)):
                return reason
        return None

    def sparse_semantics(self, hyperparameters: dict[str, Any] | None = None) -> str:
        """dense, lazy or unsupported: the declared semantics for these (resolved) hyperparameters."""
        when = self.sparse_lazy_when
        if when is not None and hyperparameters is not None and bool(when(hyperparameters)):
            return "lazy"
        return self.sparse.semantics

    def sparse_expect(self, hyperparameters: dict[str, Any] | None = None) -> tuple[str, ...]:
        """The variants declared for sparse gradients: the mode's, its sparse-only ones, and lazy if declared."""
        out = list(self.expect) + [v for v in self.sparse.expect if v not in self.expect]
        semantics = self.sparse_semantics(hyperparameters)
        if semantics == "lazy" and "lazy" not in out:
            out.append("lazy")
        if semantics == "dense" and "lazy" in out:
            out.remove("lazy")
        return tuple(out)


def _plain(value: Any) -> Any:
    """numpy scalars to Python scalars, so adapters get ordinary arguments."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


@dataclass(frozen=True)
class Spec:
    rule: str
    file: str
    title: str
    summary: str
    references: tuple[str, ...]
    hyperparameters: dict[str, Hyperparameter]
    state: dict[str, StateSlot]
    state_init: dict[str, Expression]
    step: tuple[Equation, ...]
    variants: dict[str, Variant]
    frameworks: dict[str, FrameworkModel]
    modes: dict[tuple[str, str], ModeConfig]
    tolerance: dict[str, ToleranceModel]
    cases: tuple[str, ...]
    increments: dict[str, str] = field(default_factory=dict)
    ranks: tuple[int, ...] = (0, 1, 2, 3)

    @property
    def defaults(self) -> dict[str, Any]:
        return {name: hp.default for name, hp in self.hyperparameters.items()}

    def resolve(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """Canonical hyperparameters: `given` over the defaults, checked by name and type."""
        out = self.defaults
        for name, value in (given or {}).items():
            if name not in self.hyperparameters:
                raise KeyError(
                    f"rule {self.rule} has no hyperparameter {name!r}"
                    f" (it has: {', '.join(self.hyperparameters)})"
                )
            default = self.hyperparameters[name].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise TypeError(f"hyperparameter {name!r} of rule {self.rule} is a flag; got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"hyperparameter {name!r} of rule {self.rule} is a number; got {value!r}")
            out[name] = value
        return out

    def equations(self, variants: tuple[str, ...] | list[str] = ()) -> tuple[Equation, ...]:
        """The step with the named variants applied in order (cached)."""
        return _compose(self, tuple(variants))

    def initial_state(self, variants: tuple[str, ...] | list[str] = ()) -> dict[str, Expression]:
        """Initial-value expressions of the state slots, with variant overrides."""
        init = dict(self.state_init)
        for name in variants:
            init.update(self.variant(name).state_init)
        return init

    def sparse_semantics(self, variants: tuple[str, ...] | list[str] = ()) -> str:
        semantics = "dense"
        for name in variants:
            semantics = self.variant(name).sparse or semantics
        return semantics

    def variant(self, name: str) -> Variant:
        try:
            return self.variants[name]
        except KeyError:
            raise KeyError(
                f"rule {self.rule} has no variant {name!r} (it has: {', '.join(self.variants)})"
            ) from None

    def mode(self, framework: str, mode: str) -> ModeConfig:
        try:
            return self.modes[(framework, mode)]
        except KeyError:
            have = ", ".join(f"{f}/{m}" for f, m in self.modes) or "none"
            raise KeyError(f"rule {self.rule} has no mode {framework}/{mode} (it has: {have})") from None


@functools.lru_cache(maxsize=None)
def _compose_cached(step: tuple[Equation, ...], variants: tuple[Variant, ...]) -> tuple[Equation, ...]:
    eqs = list(step)
    for variant in variants:
        eqs = _apply_variant(eqs, variant)
    return tuple(eqs)


def _compose(spec: Spec, names: tuple[str, ...]) -> tuple[Equation, ...]:
    return _compose_cached(spec.step, tuple(spec.variant(n) for n in names))


def _apply_variant(eqs: list[Equation], variant: Variant) -> list[Equation]:
    """Replace equations by target; insert new targets before their first reader."""
    eqs = list(eqs)
    index = {eq.target: i for i, eq in enumerate(eqs)}
    fresh = []
    for target, expr in variant.equations:
        if target in index:
            eqs[index[target]] = Equation(target, expr)
        else:
            fresh.append(Equation(target, expr))
    # New intermediates go just before their first reader; the last one listed
    # first, so that one reading another ends up after it.
    for new in reversed(fresh):
        for i, eq in enumerate(eqs):
            if new.target in eq.expr.names:
                eqs.insert(i, new)
                break
        # else: an intermediate that only another variant introduces (alpha_t
        # of epsilon_hat, overridden by bias_correction_in_dtype); alone, the
        # variant leaves it out.
    return eqs
