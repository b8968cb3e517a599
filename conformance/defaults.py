"""Defaults conformance: each framework's default hyperparameters, read from
the framework itself (the adapter introspects the constructor), against the
canonical defaults of the spec.

The spec's argument mapping says which native argument carries which
canonical hyperparameter (`betas: [beta1, beta2]`); only arguments that carry
one hyperparameter unchanged are compared. A framework default that differs
from the canonical one is a finding to report (Keras Adam's epsilon 1e-7
against 1e-8), not a failure. A spec whose declared `defaults:` disagree with
what the framework reports is stale and says so.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from .spec import ModeConfig, Spec

#: Marker for "the native argument has no default" (it must be passed).
REQUIRED = "<required>"


def canonical_arguments(spec: Spec, mode: ModeConfig) -> list[tuple[str, int | None, str]]:
    """(native argument, position in a tuple argument or None, canonical hyperparameter)."""
    out = []
    for native, value in mode.args.items():
        parts = value if isinstance(value, tuple) else (value,)
        for i, part in enumerate(parts):
            name = part.source.strip()
            if name in spec.hyperparameters:
                out.append((native, i if isinstance(value, tuple) else None, name))
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def rows_for_mode(spec: Spec, mode: ModeConfig, native: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per canonical hyperparameter the mode's optimizer takes."""
    rows = []
    for arg, index, canonical in canonical_arguments(spec, mode):
        if arg not in native:
            measured: Any = None
            note = f"{mode.optimizer} has no introspectable default for {arg!r}"
        else:
            measured = native[arg]
            note = None
            if index is not None:
                measured = measured[index] if isinstance(measured, (list, tuple)) and len(measured) > index else None
        canon = spec.hyperparameters[canonical].default
        declared = mode.defaults.get(canonical)
        has_default = measured != REQUIRED and arg in native
        if measured is None and has_default:
            # None conventionally means "off": the same as a canonical 0 or
            # False (Keras weight_decay=None, Optax momentum=None), but not
            # as a canonical nonzero value (optax.adadelta learning_rate=None
            # skips the lr scaling altogether).
            note = "None (off)" if canon in (0, False) else f"None: {mode.optimizer} does something else than {canonical}={canon}"
        rows.append(
            {
                "rule": spec.rule,
                "framework": mode.framework,
                "mode": mode.mode,
                "optimizer": mode.optimizer,
                "hyperparameter": canonical,
                "argument": arg if index is None else f"{arg}[{index}]",
                "framework_default": measured,
                "canonical_default": canon,
                "differs": has_default and (canon not in (0, False) if measured is None else not same(measured, canon)),
                "required": measured == REQUIRED,
                "declared": declared,
                "stale_declaration": declared is not None and measured is not None and not same(measured, declared),
                "note": note,
            }
        )
    return rows


def optimizer_modes(spec: Spec, framework: str) -> list[ModeConfig]:
    """One mode per distinct optimizer of the framework (modes that only pick
    an implementation share their optimizer's defaults)."""
    seen: dict[str, ModeConfig] = {}
    for (fw, _), mode in spec.modes.items():
        if fw == framework:
            seen.setdefault(mode.optimizer, mode)
    return list(seen.values())


def measure(specs: Iterable[Spec], framework: str, ask: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
    """Rows for every rule the framework maps; `ask(request)` is a host's `defaults`.
    A framework that cannot answer gets one row per optimizer with the reason."""
    rows: list[dict[str, Any]] = []
    for spec in specs:
        for mode in optimizer_modes(spec, framework):
            answer = ask({"optimizer": mode.optimizer, "mode": mode.mode, "import": mode.imports})
            if answer.status != "ok":
                rows.append(
                    {
                        "rule": spec.rule,
                        "framework": framework,
                        "mode": mode.mode,
                        "optimizer": mode.optimizer,
                        "error": answer.reason or answer.status,
                    }
                )
                continue
            rows.extend(rows_for_mode(spec, mode, answer.result))
    return rows
