"""From a spec file to a `Spec`: inheritance, framework-wide declarations,
validation, compilation.

`load_spec` reads one rule's file (with the rule it `inherits`, and the
declarations of `specs/frameworks/`), validates it against
`conformance.specschema` and compiles every equation, mapping and condition
(`conformance.expr`). `extend_spec` adds a user's targets to a rule. Every
problem is one `SourceError` naming the file, the key path and the line.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from .expr import FUNCTIONS, Equation, ExprError, Expression, compile_expression, parse_equation
from .registry import FRAMEWORKS, foreign_module
from .spec import LAZY, ModeConfig, Spec, Variant, _apply_variant
from .specschema import _RULE_NAME, STEP_INPUTS, ExtensionModel, FrameworkDeclarations, FrameworkModel, ModeModel, SpecModel
from .yamlsource import KeyPath, Located, SourceError, inherit, load_yaml_file

#: A spec that `inherits: RULE` takes that rule's spec (a file beside it) and
#: replaces what it writes itself: these mappings entry by entry (`name: null`
#: removes an entry), every other key whole. Pinned `cases` are a rule's own
#: and never inherited.
INHERITED_BY_NAME = ("hyperparameters", "state", "variants", "frameworks", "tolerance", "increments")
_NOT_INHERITED = ("cases",)


def _located_spec(path: Path, chain: tuple[Path, ...] = ()) -> Located:
    """A spec file's YAML, with the spec it inherits underneath (`INHERITED_BY_NAME`)."""
    located = load_yaml_file(path)
    data = located.data
    if not isinstance(data, dict):
        raise located.error((), "a spec must be a mapping of keys (title, summary, hyperparameters, ...)")
    if "inherits" not in data:
        return located
    name = data["inherits"]
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        raise located.error(("inherits",), f"inherits names a rule (a spec file beside this one), got {name!r}")
    parent_path = (path.parent / f"{name}.yaml").resolve()
    if parent_path in chain + (path.resolve(),):
        circle = " -> ".join(p.stem for p in chain + (path.resolve(), parent_path))
        raise located.error(("inherits",), f"specs inherit in a circle: {circle}")
    if not parent_path.is_file():
        raise located.error(("inherits",), f"no spec {name!r} to inherit beside this file (looked at {parent_path})")
    parent = _located_spec(parent_path, chain + (path.resolve(),))
    parent = replace(parent, data={k: v for k, v in parent.data.items() if k not in _NOT_INHERITED})
    return inherit(parent, located, INHERITED_BY_NAME, drop=("inherits",))


def builtin_spec_dir() -> Path:
    """The built-in specs: installed beside the package, or the checkout's `specs/`."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "specs", package.parent / "specs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"built-in specs not found next to {package}")


@functools.lru_cache(maxsize=None)
def framework_declarations(framework: str) -> Located | None:
    """A framework's declarations file, validated (None: it has none)."""
    path = builtin_spec_dir() / "frameworks" / f"{framework}.yaml"
    if not path.is_file():
        return None
    located = load_yaml_file(path)
    try:
        FrameworkDeclarations.model_validate(located.data)
    except ValidationError as exc:
        raise _from_pydantic(exc, located) from None
    for i, entry in enumerate(located.data.get("unsupported") or []):
        if entry.get("when") is not None:
            _located_expression(located, ("unsupported", i, "when"), entry["when"], None)
    return located


def with_framework_declarations(located: Located, hyperparameters: Any = None) -> Located:
    """Each framework section of a spec (a framework's, or a target's that
    runs on one) with its framework's `unsupported` declarations appended,
    those whose `when` reads only hyperparameters the rule has; an error in
    one names the declarations file, its key path and line."""
    data = located.data
    if not isinstance(data, dict):
        return located
    sections, names = data.get("frameworks"), data.get("hyperparameters") if hyperparameters is None else hyperparameters
    if not isinstance(sections, dict) or not isinstance(names, (dict, set, frozenset)):
        return located
    sections = dict(sections)
    lines, origins, renames = dict(located.lines), dict(located.origins), dict(located.renames)
    for fw, section in sections.items():
        if not isinstance(section, dict):
            continue
        runs_on = fw if fw in FRAMEWORKS else section.get("framework")
        decl = framework_declarations(runs_on) if runs_on in FRAMEWORKS else None
        if decl is None:
            continue
        own = list(section.get("unsupported") or [])
        for i, entry in enumerate(decl.data.get("unsupported") or []):
            when = entry.get("when")
            reads = compile_expression(when).names if when is not None else set()
            if not reads <= set(names) or any(e.get("when") == when and not e.get("modes") for e in own if isinstance(e, dict)):
                continue  # (the rule lacks the option, or the section says it itself)
            at = ("frameworks", fw, "unsupported", len(own))
            own.append(entry)
            for p, line in decl.lines.items():
                if p[:2] == ("unsupported", i):
                    lines[at + p[2:]] = line
            origins[at], renames[at] = decl.file, ("unsupported", i)
        sections[fw] = {**section, "unsupported": own}
    return replace(located, data={**data, "frameworks": sections}, lines=lines, origins=origins, renames=renames)


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    rule = path.stem
    if not _RULE_NAME.match(rule):
        raise SourceError(path, (), None, f"the file name gives the rule name; {rule!r} must match {_RULE_NAME.pattern}")
    located = with_framework_declarations(_located_spec(path))
    try:
        model = SpecModel.model_validate(located.data)
    except ValidationError as exc:
        raise _from_pydantic(exc, located) from None
    return _build(rule, str(path), model, located)


def _from_pydantic(exc: ValidationError, located: Located) -> SourceError:
    errors = exc.errors(include_url=False)
    # pydantic reports each failed branch of a union; the shortest path is the
    # one a person should look at, and "extra" / "missing" are the clearest.
    errors.sort(key=lambda e: (e["type"] not in ("extra_forbidden", "missing"), len(e["loc"])))
    first = errors[0]
    path = tuple(p for p in first["loc"] if not _is_union_tag(p))
    kind = first["type"]
    if kind == "extra_forbidden":
        message = f"unknown key {path[-1]!r}"
    elif kind == "missing":
        message = f"missing required key {path[-1]!r}"
    else:
        message = f"{first['msg']}, got {first.get('input')!r}"
    more = len({e['loc'] for e in errors}) - 1
    if more > 0:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return located.error(path, message)


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the branch type into the location of union errors
    return isinstance(part, str) and (
        part in {"str", "float", "int", "bool", "list[union[str,float]]"} or "[" in part or part.startswith("function-")
    )


def _build(rule: str, file: str, model: SpecModel, src: Located) -> Spec:
    hp = model.hyperparameters
    for name, h in hp.items():
        if not name.isidentifier() or name in ("p", "g", "t") or name in FUNCTIONS:
            raise src.error(("hyperparameters", name), f"{name!r} cannot be a hyperparameter name")
        if h.domain is not None and h.domain.low > h.domain.high:
            raise src.error(("hyperparameters", name, "domain"), "domain low is above high")
        if h.domain is not None and h.domain.log and h.domain.low <= 0:
            raise src.error(("hyperparameters", name, "domain", "low"), "a log-scale domain needs low > 0")
    if "lr" not in hp:
        raise src.error(("hyperparameters",), "every rule needs an 'lr' hyperparameter (the per-step learning rate)")
    for name in model.state:
        if not name.isidentifier() or name in STEP_INPUTS or name in hp or name in FUNCTIONS:
            raise src.error(("state", name), f"{name!r} cannot be a state slot name (it clashes)")

    expr = functools.partial(_located_expression, src)

    hp_names = set(hp)
    state_init = {
        name: expr(("state", name, "init"), slot.init, hp_names | {"p"}) for name, slot in model.state.items()
    }

    base_known = hp_names | set(model.state) | set(STEP_INPUTS)
    readonly = hp_names | {"t", "lr"}
    step = _equations(model.step, ("step",), base_known, src, readonly)
    if not any(eq.target == "p" for eq in step):
        raise src.error(("step",), "the step never assigns p (the parameter update)")

    variants: dict[str, Variant] = {LAZY.name: LAZY}
    variants.update(_variants(model.variants, step, base_known, readonly, hp_names, set(model.state), src, expr))

    modes = _framework_modes(model.frameworks, hp_names, set(model.state), variants, src, expr, file)
    return Spec(
        rule=rule,
        file=file,
        title=model.title,
        summary=model.summary,
        references=tuple(model.references),
        hyperparameters=dict(hp),
        state=dict(model.state),
        state_init=state_init,
        step=step,
        variants=variants,
        frameworks=dict(model.frameworks),
        modes=modes,
        tolerance=dict(model.tolerance),
        cases=tuple(_case_paths(model.cases, file, src)),
        increments=_increments(model, step, src),
        ranks=tuple(sorted(set(model.ranks))),
    )


def _located_expression(src: Located, path: KeyPath, source: Any, known: set[str], allow_none: bool = False) -> Expression:
    try:
        return compile_expression(str(source) if isinstance(source, (int, float)) else source, known, allow_none=allow_none)
    except ExprError as exc:
        raise src.error(path, str(exc)) from None


def extension_of(path: str | Path) -> str | None:
    """The rule a user's file extends (`extends: adamw`), None for a rule's own spec."""
    located = load_yaml_file(Path(path))
    data = located.data
    return data.get("extends") if isinstance(data, dict) and isinstance(data.get("extends"), str) else None


def extend_spec(base: Spec, path: str | Path) -> Spec:
    """`base` with the targets of a user's file that extends it: its math,
    variants and domains, and one more column per target, each checked
    against `base` with errors located in the user's file."""
    path = Path(path)
    located = with_framework_declarations(load_yaml_file(path), set(base.hyperparameters))
    try:
        model = ExtensionModel.model_validate(located.data)
    except ValidationError as exc:
        raise _from_pydantic(exc, located) from None
    for name in model.frameworks:
        if any(fw == name for fw, _ in base.modes):
            raise located.error(("frameworks", name), f"{base.rule} already has a column {name!r} (from {base.file})")
    expr = functools.partial(_located_expression, located)
    for name in model.variants:
        if name in base.variants:
            raise located.error(("variants", name), f"{base.rule} already has a variant {name!r} (from {base.file}); name yours otherwise")
    hp_names = set(base.hyperparameters)
    base_known = hp_names | set(base.state) | set(STEP_INPUTS)
    variants = {**base.variants, **_variants(model.variants, base.step, base_known, hp_names | {"t", "lr"}, hp_names, set(base.state), located, expr)}
    added = _framework_modes(model.frameworks, hp_names, set(base.state), variants, located, expr, str(path))
    return replace(base, variants=variants, frameworks={**base.frameworks, **model.frameworks}, modes={**base.modes, **added})


def _increments(model: SpecModel, step: tuple[Equation, ...], src: Located) -> dict[str, str]:
    """`increments`: each an intermediate of the step, of a value read before it."""
    order = [eq.target for eq in step]
    for name, of in model.increments.items():
        path = ("increments", name)
        if name not in order or name == "p" or name in model.state:
            raise src.error(path, f"{name!r} is not an intermediate of the step (p and state slots are increments already)")
        if of not in model.state and of not in order[: order.index(name)] and of not in ("p", "g"):
            raise src.error(path, f"{of!r} is not a state slot or a value computed before {name!r}")
    return dict(model.increments)


def _case_paths(cases: list[str], file: str, src: Located) -> list[str]:
    """Fixed case files, relative to the spec file; each must exist."""
    out = []
    for i, name in enumerate(cases):
        path = (Path(file).parent / name).resolve()
        if not path.is_file():
            raise src.error(("cases", i), f"case file {name!r} not found (looked at {path})")
        out.append(str(path))
    return out


def _equations(
    texts: list[str], path: KeyPath, known: set[str], src: Located, readonly: set[str]
) -> tuple[Equation, ...]:
    out: list[Equation] = []
    defined = set(known)
    assigned: dict[str, int] = {}
    for i, text in enumerate(texts):
        try:
            target, rhs = parse_equation(text)
            compiled = compile_expression(rhs, defined)
        except ExprError as exc:
            raise src.error(path + (i,), str(exc)) from None
        if target in assigned:
            raise src.error(
                path + (i,), f"{target!r} is assigned twice in one step (first at {path[-1]}[{assigned[target]}])"
            )
        if target in readonly:
            raise src.error(path + (i,), f"{target!r} is an input of the step and cannot be assigned")
        assigned[target] = i
        defined.add(target)
        out.append(Equation(target, compiled))
    return tuple(out)


def _check_order(eqs: list[Equation], known: set[str], src: Located, path: KeyPath) -> None:
    defined = set(known)
    for eq in eqs:
        missing = eq.expr.names - defined
        if missing:
            raise src.error(path, f"after applying the variant, {eq.source!r} reads {sorted(missing)} before it is defined")
        defined.add(eq.target)


#: a target's name is a column of the matrix and part of cell ids
_TARGET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def _variants(models, step, base_known, readonly, hp_names, state_names, src, expr) -> dict[str, Variant]:
    """The variants of `models`, each composed with `step` and checked (located in `src`)."""
    variants: dict[str, Variant] = {}
    for name, vm in models.items():
        if not name.isidentifier():
            raise src.error(("variants", name), f"{name!r} is not a valid variant name")
        defined = base_known | {eq.target for eq in step}
        pairs: list[tuple[str, Expression]] = []
        for i, text in enumerate(vm.equations):
            path = ("variants", name, "equations", i)
            try:
                target, rhs = parse_equation(text)
            except ExprError as exc:
                raise src.error(path, str(exc)) from None
            if target in readonly:
                raise src.error(path, f"{target!r} is an input of the step and cannot be assigned")
            defined.add(target)
            pairs.append((target, expr(path, rhs, defined)))
        inits = []
        for slot, value in vm.state.items():
            if slot not in state_names:
                raise src.error(("variants", name, "state", slot), f"{slot!r} is not a state slot of this rule")
            inits.append((slot, expr(("variants", name, "state", slot), value, hp_names | {"p"})))
        variant = Variant(name, vm.explain, vm.cite, tuple(pairs), vm.sparse, tuple(inits), vm.precision)
        try:
            composed = _apply_variant(list(step), variant)
        except ValueError as exc:
            raise src.error(("variants", name), str(exc)) from None
        _check_order(composed, base_known, src, ("variants", name))
        variants[name] = variant
    return variants


@dataclass(frozen=True)
class _RuleNames:
    """What a framework section is checked against: the rule's names, and
    where to say what is wrong (`src`, `expr` compiling a located expression)."""

    hyperparameters: set[str]
    state: set[str]
    variants: dict[str, Variant]
    src: Located
    expr: Callable[..., Expression]


@dataclass(frozen=True)
class _ModeSource:
    """One mode of a framework section: the mode's own keys, falling back to the section's."""

    rule: _RuleNames
    framework: str
    name: str
    section: FrameworkModel
    mode: ModeModel

    @property
    def base(self) -> KeyPath:
        return ("frameworks", self.framework)

    @property
    def path(self) -> KeyPath:
        return self.base + ("modes", self.name)

    def pick(self, key: str) -> tuple[Any, KeyPath]:
        """The mode's own `key` where it gives one, else the section's, with the path it is written at."""
        own = getattr(self.mode, key)
        return (own, self.path + (key,)) if own is not None else (getattr(self.section, key), self.base + (key,))

    def error(self, path: KeyPath, message: str) -> SourceError:
        return self.rule.src.error(path, message)

    def when(self, path: KeyPath, source: str | None) -> Expression | None:
        return self.rule.expr(path, source, self.rule.hyperparameters) if source is not None else None


def _framework_modes(sections, hp_names, state_names, variants, src, expr, file) -> dict[tuple[str, str], ModeConfig]:
    """Every mode of every framework section (a framework's, or a user's
    target's that names the framework running it)."""
    rule = _RuleNames(hp_names, state_names, variants, src, expr)
    modes: dict[tuple[str, str], ModeConfig] = {}
    for fw, section in sections.items():
        base = ("frameworks", fw)
        adapter = section.framework or fw
        if section.framework is not None and section.framework not in FRAMEWORKS:
            raise src.error(base + ("framework",), f"unknown framework {section.framework!r} (known: {', '.join(FRAMEWORKS)})")
        if fw in FRAMEWORKS and adapter != fw:
            raise src.error(base + ("framework",), f"{fw!r} is a framework's own section; a target of your own needs a name of its own")
        if adapter not in FRAMEWORKS:
            raise src.error(
                base,
                f"unknown framework {fw!r} (known: {', '.join(FRAMEWORKS)}); a target of your own names the"
                " framework that runs it, e.g. `framework: torch`",
            )
        if fw != adapter and not _TARGET_NAME.match(fw):
            raise src.error(base, f"a target's name is a column and part of cell ids: {fw!r} must match {_TARGET_NAME.pattern}")
        for mode_name, mm in section.modes.items():
            m = _ModeSource(rule, fw, mode_name, section, mm)
            if not _TARGET_NAME.match(mode_name):
                raise m.error(m.path, f"a mode's name is part of cell ids: {mode_name!r} must match {_TARGET_NAME.pattern}")
            config = _mode_config(m)
            imports = foreign_module(adapter, config.optimizer)
            if imports is not None and fw == adapter:
                raise m.error(
                    m.pick("optimizer")[1],
                    f"{config.optimizer!r} is not {fw}'s own optimizer: a third-party or in-house optimizer is a target"
                    f" of its own, a section with a name of its own and `framework: {fw}`",
                )
            where = src.file_of(base) if file == src.file else file
            modes[(fw, mode_name)] = replace(config, adapter=adapter if adapter != fw else "", imports=imports, file=where)
    return modes


def _mode_config(m: _ModeSource) -> ModeConfig:
    """One mode, every mapping and condition checked against the rule's names."""
    section, mm = m.section, m.mode
    known = FRAMEWORKS[section.framework or m.framework].modes
    own = section.framework is not None and section.framework != m.framework  # a target: its optimizer is its own
    if known and m.name not in known and mm.optimizer is None and mm.args is None and not own:
        raise m.error(
            m.path,
            f"unknown mode {m.name!r} for {m.framework}: its adapter selects {', '.join(known)} by name;"
            " a mode of another name must set its own optimizer or args",
        )
    sparse, sparse_path = m.pick("sparse")
    for i, name in enumerate(sparse.expect):
        if name not in m.rule.variants:
            raise m.error(sparse_path + ("expect", i), f"unknown variant {name!r} (declared: {', '.join(m.rule.variants)})")
    known_issues = [(i, k) for i, k in enumerate(section.known_issues) if k.modes is None or m.name in k.modes]
    return ModeConfig(
        framework=m.framework,
        mode=m.name,
        optimizer=mm.optimizer or section.optimizer,
        source=mm.source or section.source,
        args=_args(m),
        state=_state(m),
        defaults=_names_of(m, "defaults", m.rule.hyperparameters, "is not a hyperparameter of this rule"),
        expect=_expect(m),
        unsupported=_unsupported(m),
        sparse=sparse,
        sparse_unsupported=tuple(
            (m.when(sparse_path + ("unsupported", i, "when"), u.when), u.reason)
            for i, u in enumerate(sparse.unsupported)
            if u.modes is None or m.name in u.modes
        ),
        sparse_lazy_when=m.when(sparse_path + ("lazy_when",), sparse.lazy_when),
        devices=tuple(mm.devices) if mm.devices is not None else None,
        dtypes=tuple(mm.dtypes) if mm.dtypes is not None else None,
        note=mm.note or section.note,
        gradients=mm.gradients or "dense",
        hyperparameter_dtype=mm.hyperparameter_dtype or section.hyperparameter_dtype,
        known_issues=tuple(k for _, k in known_issues),
        known_issue_whens=tuple(m.when(m.base + ("known_issues", i, "when"), k.when) for i, k in known_issues),
        input_dtypes=tuple(
            (name, tuple(v) if isinstance(v, list) else (v,))
            for name, v in _names_of(m, "input_dtypes", m.rule.hyperparameters, "is not a hyperparameter of this rule").items()
        ),
    )


def _args(m: _ModeSource) -> dict[str, Any]:
    """Native argument -> compiled expression (a tuple for a list such as betas;
    None may stand for a framework's "off", e.g. optax momentum=None)."""
    given, path = m.pick("args")
    args: dict[str, Any] = {}
    for native, value in given.items():
        if isinstance(value, list):
            args[native] = tuple(m.rule.expr(path + (native, i), v, m.rule.hyperparameters, True) for i, v in enumerate(value))
        else:
            args[native] = m.rule.expr(path + (native,), value, m.rule.hyperparameters, True)
    return args


def _state(m: _ModeSource) -> dict[str, str]:
    """Native slot -> canonical slot; "-b": the framework stores the negated
    slot (a velocity kept as a negative step), which the comparison negates back."""
    given, path = m.pick("state")
    for native, canonical in given.items():
        if canonical.removeprefix("-") not in m.rule.state:
            raise m.error(path + (native,), f"{canonical!r} is not a state slot of this rule")
    return dict(given)


def _names_of(m: _ModeSource, key: str, names: set[str], what: str) -> dict[str, Any]:
    """A mapping keyed by the rule's names (defaults, input_dtypes), each key checked."""
    given, path = m.pick(key)
    for name in given:
        if name not in names:
            raise m.error(path + (name,), f"{name!r} {what}")
    return dict(given)


def _expect(m: _ModeSource) -> tuple[str, ...]:
    given, path = m.pick("expect")
    for i, name in enumerate(given):
        if name not in m.rule.variants:
            raise m.error(path + (i,), f"unknown variant {name!r} (declared: {', '.join(m.rule.variants)})")
    return tuple(given)


def _unsupported(m: _ModeSource) -> tuple[tuple[Expression | None, str], ...]:
    """The section's `unsupported` entries that apply to this mode, compiled."""
    out = []
    for i, u in enumerate(m.section.unsupported):
        if u.modes is not None and m.name not in u.modes:
            continue
        for j, name in enumerate(u.modes or ()):
            if name not in m.section.modes:
                raise m.error(m.base + ("unsupported", i, "modes", j), f"unknown mode {name!r}")
        out.append((m.when(m.base + ("unsupported", i, "when"), u.when), u.reason))
    return tuple(out)
