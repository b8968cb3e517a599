"""YAML reading that remembers where every value came from.

Specs are data written by people, so an error must point at the file, the key
path and the line. PyYAML's safe loader builds plain Python data and forgets
positions; this module composes the node tree first (safe loader, no Python
tags), records the line of every key path, rejects duplicate keys (PyYAML
would silently keep the last one) and accepts `1e-8` as a float (YAML 1.1
wants `1.0e-8`, a trap for anyone writing epsilons).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

KeyPath = tuple[str | int, ...]


class SourceError(Exception):
    """A problem in a data file, located by file, key path and line."""

    def __init__(self, file: str | Path, path: KeyPath, line: int | None, message: str):
        self.file = str(file)
        self.path = tuple(path)
        self.line = line
        self.message = message
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        at = f" at {format_path(self.path)}" if self.path else ""
        return f"{where}:{at} {self.message}" if at else f"{where}: {self.message}"


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader whose float resolver also takes `1e-8` and `3E+2`."""


_Loader.yaml_implicit_resolvers = {
    key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class Located:
    """Plain data plus the line (1-based) of every key path in it, and, for a
    document that inherits parts of another (`inherit`), the file each
    inherited part came from."""

    data: Any
    lines: dict[KeyPath, int]
    file: str
    #: key path -> the file of that subtree, where it is not `file`
    origins: dict[KeyPath, str] = field(default_factory=dict)
    #: key path -> the key path that subtree has in its own file (`origins`),
    #: where it was placed elsewhere (a framework-wide declaration)
    renames: dict[KeyPath, KeyPath] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """Line of `path`, or of its nearest ancestor that exists."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def file_of(self, path: KeyPath) -> str:
        """The file that `path` (or its nearest ancestor with an origin) came from."""
        path = tuple(path)
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path[:-1]
        return self.file

    def error(self, path: KeyPath, message: str) -> SourceError:
        return SourceError(self.file_of(path), self.path_in_file(path), self.line_of(path), message)

    def path_in_file(self, path: KeyPath) -> KeyPath:
        """`path` as the file it came from spells it (`renames`)."""
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.renames:
                return self.renames[path[:n]] + path[n:]
        return path


def inherit(parent: Located, child: Located, by_name: Iterable[str], drop: Iterable[str] = ()) -> Located:
    """`child` on top of `parent`: each top-level key of the child replaces the
    parent's, except the mappings named in `by_name`, which merge entry by
    entry (a child's entry replaces the parent's of that name whole; `name:
    null` removes it). Keys in `drop` (the `inherits` key itself) are left
    out. Every value keeps its line, and an inherited one its file, so an
    error in an inherited part points at the parent's file."""
    by_name, drop = set(by_name), set(drop)
    data: dict[str, Any] = {}
    lines: dict[KeyPath, int] = {(): child.lines.get((), 1)}
    origins: dict[KeyPath, str] = {}

    renames: dict[KeyPath, KeyPath] = {}

    def take(src: Located, path: KeyPath) -> None:
        n = len(path)
        for p, line in src.lines.items():
            if p[:n] == path:
                lines[p] = line
        for p, r in src.renames.items():
            if p[:n] == path:
                renames[p] = r
        for p, f in src.origins.items():
            if p[:n] == path:
                origins[p] = f
        if src is parent and path not in origins:
            origins[path] = parent.file_of(path)

    for key in [*parent.data, *(k for k in child.data if k not in parent.data)]:
        if key in drop:
            continue
        mine, theirs = child.data.get(key), parent.data.get(key)
        if key in by_name and isinstance(mine, dict) and isinstance(theirs, dict):
            # the parent's order, a replaced entry in its place, new entries after
            # (the order is meaningful: hypothesis draws hyperparameters in it)
            merged: dict[str, Any] = {}
            lines[(key,)] = child.lines[(key,)]
            for name, value in mine.items():
                if value is None and name not in theirs:
                    raise child.error((key, name), f"removes {name!r}, which {parent.file} does not define")
            for name, value in [*theirs.items(), *((n, v) for n, v in mine.items() if n not in theirs)]:
                if name in mine:
                    if mine[name] is not None:
                        merged[name] = mine[name]
                        take(child, (key, name))
                else:
                    merged[name] = value
                    take(parent, (key, name))
            data[key] = merged
        elif key in child.data:
            data[key] = mine
            take(child, (key,))
        else:
            data[key] = theirs
            take(parent, (key,))
    return Located(data, lines, child.file, origins, renames)


def load_yaml(text: str, file: str | Path) -> Located:
    """Parse YAML text safely; raise SourceError (never a yaml traceback)."""
    file = str(file)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            lines: dict[KeyPath, int] = {}
            if node is not None:
                _index(node, (), lines, file)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        ctx = exc.context_mark
        if exc.problem and exc.context and ctx is not None and mark is not None and ctx.line != mark.line:
            problem += f" ({exc.context} at line {ctx.line + 1})"
        raise SourceError(file, (), line, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:  # pragma: no cover - unmarked errors are rare
        raise SourceError(file, (), None, f"invalid YAML: {exc}") from None
    return Located(data, lines, file)


def load_yaml_file(path: str | Path) -> Located:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, (), None, f"cannot read: {exc}") from None
    return load_yaml(text, path)


def _index(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SourceError(
                    file, path + (key,), line, f"duplicate key {key!r} (first at line {seen[key]})"
                )
            seen[key] = line
            _index(value_node, path + (key,), lines, file)
            lines[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (i,), lines, file)
