"""Standalone reproducer scripts: one recorded case as a short Python file
that needs only numpy and the framework, ready for a bug tracker.

The script builds the framework's optimizer with the case's native
arguments, feeds it the case's gradients and prints, per step, how far the
parameters land from each reference: the rule the spec declares for the
framework and the canonical rule, both computed here by the float64 kernel
and written into the script as numbers, with the rounding bound the run
judged against. A cross cell's script runs both sides and compares them.

The framework-specific part (imports, how to build and step the optimizer)
comes from the adapter's script module (`registry.FrameworkEntry.script`);
this module writes the data and the comparison around it.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

import numpy as np

from .case import Case
from .cells import Cell
from .dtypes import PRECISION
from .evidence import references
from .judging import build_request, stored_inputs
from .registry import entry
from .spec import Spec


def literal(a: Any, digits: int | None = None) -> str:
    """A numpy array (or None, or a list of arrays) as exact Python source;
    with `digits`, each value rounded up (away from zero) to that many
    significant digits (for bounds, which need no more)."""
    if a is None:
        return "None"
    if isinstance(a, (list, tuple)) and (not a or isinstance(a[0], np.ndarray)):
        return "[" + ", ".join(literal(x, digits) for x in a) + "]"
    a = np.asarray(a, dtype=np.float64)
    return f"np.array({_nested(a, digits)})"


def _nested(a: np.ndarray, digits: int | None) -> str:
    if a.ndim == 0:
        x = float(a)
        if not np.isfinite(x):
            return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")
        if digits is None or x == 0:
            return repr(x)
        mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
        short = float(f"{mantissa}e{exponent}")
        if abs(short) < abs(x):  # round away from zero: a bound never tightens
            mantissa = f"{float(mantissa) + np.copysign(10.0 ** (1 - digits), x):.{digits - 1}f}"
            short = float(f"{mantissa}e{exponent}")
        return repr(short)
    return "[" + ", ".join(_nested(x, digits) for x in a) + "]"


def script_module(framework: str):
    name = entry(framework).script
    return importlib.import_module(name) if name else None


def script(spec: Spec, record: dict[str, Any], *, version: str = "") -> str | None:
    """The reproducer of a record that kept its case, or None where the
    framework has no script module. (A crash's script shows the error.)"""
    if "case" not in record:
        return None
    runs_on = next((cfg.runs_on for (fw, _), cfg in spec.modes.items() if fw == record["framework"]), record["framework"])
    module = script_module(runs_on)
    if module is None:
        return None
    case = Case.from_dict(record["case"])
    # the case as the cell ran it (a cross cell's case carries its first side)
    cell = Cell.from_json(record)
    # (the pinned and the candidate environment run the same script: one side)
    crossed = cell.cross is not None and cell.cross.axis != "env"
    sides: list[tuple[str, Any]] = []
    for i, side_cell in enumerate(cell.sides() if crossed else (cell,)):
        side = replace(case, mode=side_cell.mode, device=side_cell.device)
        if side_cell.gradients == "dense" and crossed:
            side = replace(side, sparse_rows=None, sparse_values=None)
        sides.append((f"run_{'ab'[i]}" if crossed else "run", side))
    # (the framework gets the hyperparameters as the run gave them: as it stores them)
    requests = [(name, build_request(spec, m, stored_inputs(spec, m, c)).wire()) for name, c in sides for m in [spec.mode(cell.framework, c.mode)]]
    refs = references(spec, dict(record, first_side=None), case)  # (a cross cell: the references, not its first side)
    header = _docstring(spec, record, requests, refs, version)
    body = [header, "import numpy as np"]
    body += sorted({line for _, r in requests for line in module.imports(r)})
    # a user's optimizer: its module (the object's container, so a submodule loads)
    body += sorted({f"import {r['optimizer'].rsplit('.', 1)[0]}" for _, r in requests if r.get("import")})
    body += ["", "inf, nan = float('inf'), float('nan')"]
    body += [f"DTYPE = {case.dtype!r}", f"steps = {case.steps}", f"params = {literal(case.params)}"]
    if any(r["sparse_rows"] is None for _, r in requests):
        body.append(f"grads = {literal(case.grads)}  # one (dense) gradient per step")
    else:
        body.append("grads = None  # (sparse gradients: rows and values below)")
    body.append(f"lrs = {literal(np.asarray(case.lr_schedule)) if case.lr_schedule is not None else 'None'}  # the learning rate of each step, or None")
    if case.sparse_rows is not None:
        body.append(f"rows = {[list(r) for r in case.sparse_rows]!r}  # the rows each step's sparse gradient lists")
        body.append(f"values = {literal([case.slices(i)[1] for i in range(case.steps)])}  # one slice per listed row")
    else:
        body += ["rows = values = None  # (dense gradients)"]
    body.append("")
    body.append("# the parameters after every step under each rule (float64, by optimizer-conformance's kernel),")
    body.append("# and how far rounding alone can move each value in DTYPE (the bound the run judged against)")
    body.append("expected = {")
    for name, ref in refs.named.items():
        body.append(f"    {name!r}: ({literal(ref.values.params)}, {literal(ref.bound.params, digits=3)}),")
    body.append("}")
    for name, request in requests:
        body += ["", "", module.run_source(request, name=name).rstrip()]
    bits, emin = PRECISION[case.dtype]
    body += ["", "", _FOOTER.format(bits=bits, emin=emin).rstrip()]
    if not crossed:
        body.append("compare(run(params, grads, lrs, rows, values), expected)")
    else:
        a, b = cell.side_names()
        body.append("got_a = run_a(params, grads, lrs, rows, values)")
        body.append("got_b = run_b(params, grads, lrs, rows, values)")
        body.append(f"print({'== ' + a!r}); compare(got_a, expected)")
        body.append(f"print({'== ' + b!r}); compare(got_b, expected)")
        first = next(iter(refs.named))
        body.append(f"print({f'== {b} against {a}, with the bound of {first}'!r})")
        if cell.crosses("gradients"):  # the declared sparse behaviour may be to differ (lazy, per-slice squares)
            body.append(f"print({'   (the run: ' + str(record.get('outcome')) + ': ' + str(record.get('reason', '')) + ')'!r})")
        body.append(f"compare(got_b, {{{a!r}: (got_a, expected[{first!r}][1])}})")
    return "\n".join(body) + "\n"


def _docstring(spec: Spec, record: dict[str, Any], requests: list[tuple[str, dict]], refs: Any, version: str) -> str:
    lines = [
        '"""Reproducer: {rule} on {fw} ({mode}, {device}, {dtype}{grad}).'.format(
            rule=record["rule"], fw=record["framework"], mode=record["mode"], device=record["device"], dtype=record["dtype"],
            grad=", " + record["gradients"] + " gradients" if record.get("gradients", "dense") != "dense" else "",
        ),
        "",
        f"optimizer-conformance{(' ' + version) if version else ''} found: {record.get('outcome')}: {record.get('reason', '')}",
        "",
        "It runs " + " and ".join(sorted({r['optimizer'] for _, r in requests})) + " on the case's gradients and prints, per step,",
        "how far the parameters land from each rule below (absolute, and in ulps of DTYPE),",
        "flagging a difference beyond the rounding bound with '!'. (It compares the parameters;",
        "the run compared the optimizer's state slots as well.)",
        "",
    ]
    for name in refs.named:
        variants = name.split(" ", 1)[1].split("+") if name.startswith("declared ") else []
        if not variants:
            lines.append(f"{name}: the update rule of specs/{record['rule']}.yaml as written")
        for v in variants:
            var = spec.variants.get(v)
            if var is not None:
                lines.append(f"{v}: {' '.join(var.explain.split())}")
                if var.cite:
                    lines.append(f"  (source: {' '.join(var.cite.split())})")
    lines += ["", "Needs only numpy and the framework: python this_file.py", '"""']
    return "\n".join(_wrap(line) for line in lines).replace("\\", "\\\\")


def _wrap(line: str, width: int = 92) -> str:
    import textwrap

    if len(line) <= width:
        return line
    indent = "  " if line.startswith("  ") else ""
    return "\n".join(textwrap.wrap(line, width, subsequent_indent=indent + "  "))


_FOOTER = '''
def ulp(x, bits={bits}, emin={emin}):
    """The spacing of DTYPE at |x|."""
    m, e = np.frexp(np.abs(x))
    return np.ldexp(1.0, np.maximum(e - 1, emin) - (bits - 1))


def where(i):
    return "element " + str([int(k) for k in np.unravel_index(i, np.shape(params))]) if np.ndim(params) else "the scalar"


def compare(got, references):
    """Per step, the largest difference from each reference; '!' where beyond the bound."""
    got = np.asarray(got, dtype=np.float64).reshape(steps, -1)
    for name, (want, bound) in references.items():
        want = np.asarray(want, dtype=np.float64).reshape(got.shape)
        bound = np.asarray(bound, dtype=np.float64).reshape(got.shape)
        with np.errstate(all="ignore"):
            diff = np.where((got == want) | (np.isnan(got) & np.isnan(want)), 0.0, np.abs(got - want))
            diff = np.where(np.isnan(diff), np.inf, diff)
            judged = np.isfinite(bound)
            beyond = judged & (diff > bound)
            ulps = np.where(judged, diff / ulp(want), 0.0)
        print(f"against {{name}}:")
        for s in range(steps):
            i = int(np.argmax(np.where(judged[s], diff[s] / bound[s], -1.0)))
            mark = "!" if beyond[s].any() else " "
            if not judged[s].any():
                print(f" {{mark}} step {{s + 1}}: not judged (the reference leaves {{DTYPE}}'s range)")
                continue
            print(f" {{mark}} step {{s + 1}}: |diff| {{diff[s][i]:.3g}} ({{ulps[s][i]:.3g}} ulp, bound {{bound[s][i]:.3g}})"
                  f" at {{where(i)}}: got {{float(got[s][i])!r}}, expected {{float(want[s][i])!r}}")
        if beyond.any():
            s = int(np.argmax(beyond.any(axis=1)))
            i = int(np.argmax(np.where(beyond[s], diff[s] / bound[s], -1.0)))
            print(f"=> DIFFERS from {{name}} beyond rounding, first at step {{s + 1}}, {{where(i)}}:"
                  f" got {{float(got[s][i])!r}}, expected {{float(want[s][i])!r}}, |diff| {{diff[s][i]:.3g}} > bound {{bound[s][i]:.3g}}")
        else:
            print(f"=> matches {{name}} within rounding")
'''
