"""The spec section of a quick check (`conformance check FRAMEWORK:PATH --rule RULE`).

A target named on the command line gets the rule's built-in section for its
framework, kept to the arguments its constructor takes (introspected by the
framework's worker); the command writes it into the results directory, where
it can be copied into a spec directory and refined.
"""

from __future__ import annotations

from typing import Any

from .catalog import Catalog
from .expr import compile_expression


def check_section(catalog: Catalog, rule: str, framework: str, path: str, accepted: dict[str, Any]) -> dict[str, Any]:
    """The spec section of a quick check (`conformance check`): the built-in
    section of `framework` for `rule` (its argument mapping), keeping the
    arguments the target's constructor takes (`accepted`, introspected); a
    hyperparameter that only a dropped argument carries is unsupported away
    from its default. Parameters only (a library's state may hold other
    quantities: write a spec section to compare state), dense gradients."""
    spec = catalog.get(rule)
    if framework not in spec.frameworks:
        raise ValueError(f"rule {rule} has no {framework} section to take the argument mapping from")
    base = spec.frameworks[framework]
    args = {k: v for k, v in base.args.items() if k in accepted}
    carried = {n for v in args.values() for x in (v if isinstance(v, list) else [v]) if isinstance(x, str) for n in _names(x)}
    unsupported = []
    for name, hp in spec.hyperparameters.items():
        if name == "lr" or name in carried:
            continue
        when = (f"not {name}" if hp.default else name) if isinstance(hp.default, bool) else f"{name} != {hp.default!r}"
        unsupported.append({"when": when, "reason": f"{path} takes no argument for {name} (its constructor's signature)"})
    modes = {"forloop": {}, "foreach": {}} if framework == "torch" and "foreach" in accepted else {"default": {}}
    return {
        "framework": framework,
        "optimizer": path,
        "source": f"{path} (quick check: `conformance check {framework}:{path} --rule {rule}`)",
        "args": args,
        "state": {},
        "modes": modes,
        "expect": [],
        "unsupported": unsupported,
        "sparse": {"semantics": "unsupported", "note": "the quick check runs dense gradients; declare sparse semantics in a spec section to check them"},
    }


def _names(source: str) -> set[str]:
    return set(compile_expression(source, None, allow_none=True).names)
