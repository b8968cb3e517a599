"""Where specs come from: the built-in specs/ plus any user directories.

Built-in specs live in the checkout's top-level specs/ and inside the wheel
as conformance/specs/; users add theirs with `--specs DIR` (repeatable), so
a team's in-house optimizer is one more YAML file. Loading is all or
nothing: the first malformed file stops it with a located error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .spec import Spec
from .specload import builtin_spec_dir, extend_spec, extension_of, load_spec
from .yamlsource import SourceError


@dataclass(frozen=True)
class Catalog:
    specs: dict[str, Spec]

    def get(self, rule: str) -> Spec:
        try:
            return self.specs[rule]
        except KeyError:
            raise KeyError(f"unknown rule {rule!r} (known: {', '.join(sorted(self.specs))})") from None

    def targets(self) -> dict[str, str]:
        """Each user's target (a column that is not a framework) -> the framework that runs it."""
        return self._targets

    @functools.cached_property
    def _targets(self) -> dict[str, str]:  # (asked for every cell: computed once)
        return {cfg.framework: cfg.adapter for spec in self.specs.values() for cfg in spec.modes.values() if cfg.adapter}

    def imports(self, frameworks: Iterable[str] | None = None, rules: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Each module a user's optimizer needs imported -> the spec files
        (with target) naming it, for the selected columns and rules (all: None)."""
        chosen = None if frameworks is None else set(frameworks)
        out: dict[str, list[str]] = {}
        for spec in self.specs.values():
            if rules is not None and spec.rule not in rules:
                continue
            for cfg in spec.modes.values():
                if cfg.imports is not None and (chosen is None or cfg.framework in chosen):
                    where = f"{cfg.file} ({cfg.framework}: {cfg.optimizer})"
                    if where not in out.setdefault(cfg.imports, []):
                        out[cfg.imports].append(where)
        return out

    def __iter__(self):
        return iter(self.specs[name] for name in sorted(self.specs))


def spec_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceError(directory, (), None, "not a directory of spec files")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_catalog(extra_dirs: Iterable[str | Path] = (), builtin: bool = True) -> Catalog:
    """The rules of the built-in specs and of `extra_dirs`; then each user
    file that `extends` a rule adds its targets to that rule (in file order).
    A built-in spec names only the frameworks' own optimizers: nothing but
    the four frameworks is ever imported because of one."""
    builtin_dir = builtin_spec_dir() if builtin else None
    dirs = ([builtin_dir] if builtin_dir is not None else []) + [Path(d) for d in extra_dirs]
    specs: dict[str, Spec] = {}
    extensions: list[tuple[Path, str]] = []
    for directory in dirs:
        for path in spec_files(directory):
            extends = extension_of(path) if directory != builtin_dir else None
            if extends is not None:
                extensions.append((path, extends))
                continue
            spec = load_spec(path)
            if spec.rule in specs:
                raise SourceError(
                    path, (), None, f"rule {spec.rule!r} is already defined by {specs[spec.rule].file}; rename one file"
                )
            if directory == builtin_dir:
                for (fw, mode), config in spec.modes.items():
                    if config.imports is not None or config.adapter:
                        raise SourceError(path, ("frameworks", fw), None, "a built-in spec names only the frameworks' own optimizers")
            specs[spec.rule] = spec
    for path, rule in extensions:
        if rule not in specs:
            raise SourceError(path, ("extends",), None, f"no rule {rule!r} to extend (known: {', '.join(sorted(specs))})")
        specs[rule] = extend_spec(specs[rule], path)
    return Catalog(specs)
