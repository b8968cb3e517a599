"""The HTML report: one self-contained page from one or more results directories.

What a person reads after a CI run, to understand a divergence in a minute
and reproduce it in five:

- the matrix of rules (rows) x framework/mode/device/dtype (columns), each
  cell coloured by its outcome with its case count and worst error, with
  filters by framework, device, dtype, gradient kind and outcome;
- per cell, a drill-down: what the cell showed and why (the matched or
  declared variant with its explanation and the spec's citation, known
  issues, crashes with their traceback), the worst and the shrunk minimal
  case, the first divergent step, slot and element, plots of the per-step
  error against the rounding bound (absolute and in ulps) and of one
  element's trajectory (framework against the references), a standalone
  reproducer script (numpy and the framework only) and the replay command;
- per rule, the framework defaults and the sparse-gradient semantics, with
  differences highlighted, and what the cases showed of each declaration;
- the environment of every merged run: versions, devices, CPU and GPU names,
  seed, profile, duration.

Everything is in the one file: CSS, the page's script, plotly.js (the
plotting library, inlined from the `plotly` package; it draws SVG) and the
data. A cell's drill-down data sits in its own inert
`<script type="application/json">` block that is parsed only when the cell
is opened, so the page stays fast with thousands of cells. Jinja2
autoescaping and `tojson` escape everything that comes from specs and
results, and the page's script inserts text with `textContent` only.
"""

from __future__ import annotations

import importlib.resources
import json
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from . import __version__
from .catalog import load_catalog
from .cells import GRADIENTS, Cell
from .dtypes import DTYPES
from .evidence import case_evidence
from .outcomes import NOT_RUN, OUTCOMES
from .registry import FRAMEWORKS
from .reproducer import script
from .summary import answer

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("conformance", "templates"),
    autoescape=True,  # every value from specs and results is escaped
    undefined=jinja2.StrictUndefined,
)

#: the matrix's outcomes, worst first, and a symbol for each (colour is not the only cue)
SYMBOLS = {"crash": "\u203c", "diverges": "\u2717", "known-divergence": "\u2248", "conforms": "\u2713", "unsupported": "\u2013", NOT_RUN: "\u00b7"}


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js, from the installed `plotly` package (inlined: no network)."""
    return importlib.resources.files("plotly").joinpath("package_data/plotly.min.js").read_text(encoding="utf-8")


def _version(cell: dict[str, Any]) -> str:
    """The column's version label: a merged run's split version, or a side-by-side environment."""
    return cell.get("version") or cell.get("env_label") or cell.get("env") or ""


def _order(cell: dict[str, Any]) -> tuple:
    fw = list(FRAMEWORKS).index(cell["framework"]) if cell["framework"] in FRAMEWORKS else len(FRAMEWORKS)
    dtypes = list(DTYPES)[::-1]  # float64 first
    c = Cell.from_json(cell)
    return (
        fw,
        cell["framework"],
        (c.crosses("env"), c.env),  # pinned, candidate, then the two compared
        cell.get("version") or "",
        c.crosses("mode"),
        c.label("mode"),
        c.crosses("device"),
        c.label("device"),
        GRADIENTS.index(c.label("gradients")),
        dtypes.index(cell["dtype"]) if cell["dtype"] in dtypes else 9,
    )


def _column(cell: dict[str, Any]) -> tuple:
    c = Cell.from_json(cell)
    return (cell["framework"], _version(cell), c.label("mode"), c.label("device"), c.label("gradients"), cell["dtype"])


def _short_dtype(dtype: str) -> str:
    return {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(dtype, dtype)


def display_outcome(cell: dict[str, Any]) -> str:
    return NOT_RUN if cell.get("skipped") else cell["outcome"]


def matrix(summary: dict[str, Any]) -> dict[str, Any]:
    """Columns (framework/mode/device/gradients/dtype), rows (rules) and, per
    row, the cell of each column (or None where the rule has no such cell)."""
    cells = sorted(summary["cells"], key=_order)
    columns: list[tuple] = []
    seen = set()
    for c in cells:
        key = _column(c)
        if key not in seen:
            seen.add(key)
            columns.append(key)
    index = {key: i for i, key in enumerate(columns)}
    rules = sorted({c["rule"] for c in cells})
    rows = {rule: [None] * len(columns) for rule in rules}
    for n, c in enumerate(summary["cells"]):
        rows[c["rule"]][index[_column(c)]] = n
    cols = [
        {
            "framework": fw, "version": version, "mode": mode, "device": device, "gradients": grad, "dtype": dtype,
            "label": _short_dtype(dtype) + {GRADIENTS[1]: " sp", GRADIENTS[2]: " sp~d"}.get(grad, ""),
            "framework_label": fw + (f" @ {version}" if version else ""),
        }
        for fw, version, mode, device, grad, dtype in columns
    ]
    # header groups: consecutive columns with the same framework, then mode, then device
    groups = []
    for depth, name in enumerate(("framework_label", "mode", "device")):
        row: list[dict[str, Any]] = []
        for i, col in enumerate(cols):
            key = tuple(cols[i][k] for k in ("framework_label", "mode", "device")[: depth + 1])
            if row and row[-1]["key"] == key:
                row[-1]["span"] += 1
                row[-1]["columns"].append(i)
            else:
                row.append({"key": key, "label": col[name], "span": 1, "columns": [i], "framework": col["framework"]})
        groups.append(row)
    return {"columns": cols, "rules": rules, "rows": rows, "groups": groups}


def _variant_doc(spec: Any, name: str) -> dict[str, str]:
    v = spec.variants.get(name) if spec is not None else None
    if v is None:
        return {"name": name, "explain": "", "cite": ""}
    return {"name": name, "explain": " ".join((v.explain or "").split()), "cite": " ".join((v.cite or "").split())}


def _mode_doc(spec: Any, cell: dict[str, Any]) -> dict[str, Any]:
    """The spec's declaration for the cell's framework mode: optimizer, source citation, note, known issues."""
    if spec is None:
        return {}
    out: dict[str, Any] = {}
    c = Cell.from_json(cell)
    for mode_name in dict.fromkeys(side.mode for side in (c.sides() if c.is_cross else (c,))):
        try:
            mode = spec.mode(cell["framework"], mode_name)
        except (KeyError, ValueError):
            continue
        out.setdefault("modes", []).append({
            "mode": mode_name,
            "optimizer": mode.optimizer,
            "source": " ".join((mode.source or "").split()),
            "note": " ".join((mode.note or "").split()),
            "expect": [_variant_doc(spec, v) for v in mode.expect],
            "known_issues": [
                {"reason": " ".join((k.reason or "").split()), "evidence": " ".join((k.evidence or "").split())}
                for k in mode.known_issues
                if (k.devices is None or cell["device"] in k.devices) and (k.dtypes is None or cell["dtype"] in k.dtypes)
            ],
            "sparse": {
                "semantics": mode.sparse.semantics, "note": " ".join((mode.sparse.note or "").split()),
                "cite": " ".join((mode.sparse.cite or "").split()),
            } if c.sparse else None,
        })
    return out


def _case_view(spec: Any, cell: dict[str, Any], record: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
    if not record:
        return None
    view: dict[str, Any] = {
        "label": label,
        "outcome": record.get("outcome"),
        "reason": record.get("reason", ""),
        "kind": record.get("kind"),
        "source": record.get("source"),
        "hyperparameters": record.get("hyperparameters"),
        "shape": record.get("shape"),
        "steps": record.get("steps"),
        "lr_schedule": record.get("lr_schedule"),
        "sparse_steps": record.get("sparse_steps"),
        "matched_variant": record.get("matched_variant"),
        "expected": record.get("expected"),
        "fingerprint": record.get("fingerprint"),
        "known_issue": record.get("known_issue"),
        "against_expected": record.get("against_expected"),
        "against_canonical": record.get("against_canonical"),
        "precision": record.get("precision"),
        "detail": record.get("detail"),
    }
    if "case" in record:
        # replayed as the cross cell (both sides); the pinned and the candidate
        # environment replay as one side, each under its interpreter
        c = Cell.from_json(cell)
        case = dict(record["case"])
        if c.is_cross and not c.crosses("env"):
            case.update(mode=c.mode, device=c.device, cross=c.cross.to_json())
            if c.crosses("gradients"):
                case["gradients"] = c.gradients
        view["case"] = case
        view["replay"] = "conformance replay case.json --json"
    if spec is not None:
        try:
            view["evidence"] = case_evidence(spec, record)
        except Exception as exc:  # noqa: BLE001 - a report never fails for one cell's evidence
            view["evidence_error"] = f"{type(exc).__name__}: {exc}"
        try:
            view["script"] = script(spec, record, version=__version__)
        except NotImplementedError as exc:
            view["script_error"] = str(exc)
        except Exception as exc:  # noqa: BLE001
            view["script_error"] = f"{type(exc).__name__}: {exc}"
    return view


def cell_detail(cell: dict[str, Any], catalog: Any) -> dict[str, Any]:
    """Everything the drill-down of one cell shows (JSON data)."""
    spec = None
    if catalog is not None:
        try:
            spec = catalog.get(cell["rule"])
        except (KeyError, ValueError):
            spec = None
    keep = ("id", "rule", "framework", "mode", "device", "dtype", "gradients", "version", "env", "env_label", "bit_identical", "counts", "examples", "seconds",
            "matched_variants", "fingerprints", "known_issues", "stale", "unsupported_reasons", "crash_reasons", "skipped",
            "worst_errors", "precision", "precision_counts", "precision_causes", "precision_undeclared", "precision_worst", "precision_unjudged")
    out = {k: cell.get(k) for k in keep}
    c = Cell.from_json(cell)
    out.update(mode=c.label("mode"), device=c.label("device"), gradients=c.label("gradients"), cross=cell.get("cross"))  # (as the id shows them)
    out["outcome"] = display_outcome(cell)
    out["variants"] = [_variant_doc(spec, v) for name in (cell.get("matched_variants") or {}) for v in name.split("+") if v != "canonical"]
    out["declaration"] = _mode_doc(spec, cell)
    minimal, worst, showcase = cell.get("minimal"), cell.get("worst"), cell.get("showcase")
    if showcase is not None and worst is not None and showcase.get("case") == worst.get("case"):
        showcase = None  # the worst case is the one that shows the variant
    out["cases"] = [v for v in (
        _case_view(spec, cell, minimal, "shrunk minimal case"),
        _case_view(spec, cell, showcase, "a case that tells the declared variant from the canonical rule"),
        _case_view(spec, cell, worst, "worst case (largest error against its bound)"),
    ) if v is not None]
    return out


def rule_tables(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per rule: defaults across frameworks (differences marked), sparse semantics, semantics and precision measured."""
    by_rule: dict[str, dict[str, Any]] = defaultdict(lambda: {"defaults": [], "sparse": [], "semantics": [], "precision": []})
    for r in summary.get("precision") or []:
        by_rule[r["rule"]]["precision"].append(r)
    for d in summary.get("defaults") or []:
        by_rule[d["rule"]]["defaults"].append(d)
    for r in summary.get("sparse") or []:
        by_rule[r["rule"]]["sparse"].append(r)
    for r in summary.get("semantics") or []:
        by_rule[r["rule"]]["semantics"].append(r)
    out = []
    for rule in sorted(by_rule):
        t = by_rule[rule]
        # defaults pivoted: one row per hyperparameter, one column per framework/mode
        where = sorted({(d["framework"], d["mode"], d["optimizer"]) for d in t["defaults"] if "hyperparameter" in d},
                       key=lambda k: (list(FRAMEWORKS).index(k[0]) if k[0] in FRAMEWORKS else 9, k[1]))
        hps: dict[str, dict[str, Any]] = {}
        for d in t["defaults"]:
            if "hyperparameter" not in d:  # a framework that could not be asked (its reason is in the environment)
                continue
            row = hps.setdefault(d["hyperparameter"], {"hyperparameter": d["hyperparameter"], "canonical": d["canonical_default"], "values": {}})
            row["values"][f"{d['framework']}/{d['mode']}"] = d
        out.append({
            "rule": rule,
            "default_columns": [{"key": f"{fw}/{mode}", "framework": fw, "mode": mode, "optimizer": opt} for fw, mode, opt in where],
            "defaults": [hps[k] for k in sorted(hps)],
            "sparse": t["sparse"],
            "semantics": t["semantics"],
            "precision": t["precision"],
        })
    return out


def _environment_view(env: dict[str, Any]) -> dict[str, Any]:
    """An environment file with every field the page shows (older or partial files lack some)."""
    host = {k: None for k in ("node", "cpu", "processor", "machine", "cpus", "system", "python")} | (env.get("host") or {})
    run = {k: None for k in ("profile", "max_examples", "max_steps", "max_size", "seed", "shard", "isolation")} | (env.get("run") or {})
    frameworks = {}
    for fw, info in (env.get("frameworks") or {}).items():
        info = dict(info) if isinstance(info, dict) else {"available": False, "reason": str(info)}
        info.setdefault("available", False)
        info.setdefault("reason", None)
        info.setdefault("versions", {})
        info.setdefault("python", None)
        info["devices"] = {d: {"available": False, "name": None, "reason": None} | (v or {}) for d, v in (info.get("devices") or {}).items()}
        frameworks[fw] = info
    return {"host": host, "run": run, "frameworks": frameworks, "time": env.get("time"),
            "finished": env.get("finished"), "duration_s": env.get("duration_s")}


def render(summary: dict[str, Any], catalog: Any = None) -> str:
    if catalog is None:
        catalog = load_catalog()
    m = matrix(summary)
    details, shared = interned([cell_detail(c, catalog) for c in summary["cells"]])
    envs = [_environment_view(e) for e in summary.get("environments") or []]
    return _ENV.get_template("report.html.j2").render(
        summary=summary,
        answer=answer(summary),
        matrix=m,
        details=details,
        shared=shared,
        cells=summary["cells"],
        display_outcome=display_outcome,
        symbols=SYMBOLS,
        outcomes=[*OUTCOMES, NOT_RUN],
        rules=rule_tables(summary),
        environments=envs,
        version=__version__,
        plotly_js=plotly_js(),
        report_js=_ENV.loader.get_source(_ENV, "report.js")[0],
        json=json,
        filters={
            "framework": sorted({c["framework"] for c in summary["cells"]}, key=lambda f: list(FRAMEWORKS).index(f) if f in FRAMEWORKS else 9),
            "device": sorted({Cell.from_json(c).label("device") for c in summary["cells"]}),
            "dtype": [d for d in list(DTYPES)[::-1] if any(c["dtype"] == d for c in summary["cells"])],
            "gradients": [g for g in GRADIENTS if any(Cell.from_json(c).label("gradients") == g for c in summary["cells"])],
        },
    )


def interned(details: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """The cells' data with what repeats across cells stored once, in a
    shared table the page reads back (report.js `resolve`): a mode's
    declaration (the same for every device and dtype) and the paragraphs of
    the reproducer scripts (their code is the same for every case of a
    framework and mode; only the case's numbers differ). Scripts were over
    half of the report (17.5 of 31 MB of cell data in the main job)."""
    table: list[Any] = []
    index: dict[str, int] = {}

    def ref(value: Any) -> int:
        key = json.dumps(value, sort_keys=True)
        if key not in index:
            index[key] = len(table)
            table.append(value)
        return index[key]

    for d in details:
        d["declaration"] = ref(d.get("declaration"))
        for view in d.get("cases") or ():
            if isinstance(view.get("script"), str):
                view["script"] = [ref(part) for part in view["script"].split("\n\n")]
    return details, table


def write_report(directory: str | Path, summary: dict[str, Any], catalog: Any = None) -> Path:
    path = Path(directory) / "index.html"
    path.write_text(render(summary, catalog), encoding="utf-8")
    return path
