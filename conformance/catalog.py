"""Where specs come from: the built-in specs/ plus any user directories.

Built-in specs live in the checkout's top-level specs/ and inside the wheel
as conformance/specs/; users add theirs with `--specs DIR` (repeatable), so
a team's in-house optimizer is one more YAML file. Loading is all or
nothing: the first malformed file stops it with a located error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .spec import Spec, load_spec
from .yamlsource import SourceError


def builtin_spec_dir() -> Path:
    package = Path(__file__).resolve().parent
    for candidate in (package / "specs", package.parent / "specs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"built-in specs not found next to {package}")


@dataclass(frozen=True)
class Catalog:
    specs: dict[str, Spec]

    def get(self, rule: str) -> Spec:
        try:
            return self.specs[rule]
        except KeyError:
            raise KeyError(f"unknown rule {rule!r} (known: {', '.join(sorted(self.specs))})") from None

    def __iter__(self):
        return iter(self.specs[name] for name in sorted(self.specs))


def spec_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceError(directory, (), None, "not a directory of spec files")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_catalog(extra_dirs: Iterable[str | Path] = (), builtin: bool = True) -> Catalog:
    dirs = ([builtin_spec_dir()] if builtin else []) + [Path(d) for d in extra_dirs]
    specs: dict[str, Spec] = {}
    for directory in dirs:
        for path in spec_files(directory):
            spec = load_spec(path)
            if spec.rule in specs:
                raise SourceError(
                    path, (), None, f"rule {spec.rule!r} is already defined by {specs[spec.rule].file}; rename one file"
                )
            specs[spec.rule] = spec
    return Catalog(specs)
