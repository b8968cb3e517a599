"""The HTML report: one self-contained page from a results directory.

This first version lists every cell (rule x framework/mode/device/dtype)
with its outcome, counts, worst errors, the variant it follows and, for a
failing cell, the shrunk minimal case and its replay command. Jinja2 with
autoescaping renders it: everything from specs and results is escaped. No
scripts or resources from the network; it opens from a CI artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("conformance", "templates"),
    autoescape=True,  # every value from specs and results is escaped
    undefined=jinja2.StrictUndefined,
)


def render(summary: dict[str, Any]) -> str:
    return _ENV.get_template("report.html.j2").render(summary=summary, json=json)


def write_report(directory: str | Path, summary: dict[str, Any]) -> Path:
    path = Path(directory) / "index.html"
    path.write_text(render(summary), encoding="utf-8")
    return path
