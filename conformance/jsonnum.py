"""Numbers in the JSON files (results, summaries, baselines): JSON has no
inf or nan, so they are written as the strings "inf", "-inf" and "nan", and
read back from them."""

from __future__ import annotations

import math
from typing import Any


def to_json(x: Any) -> float | str | None:
    """A float as JSON data: itself, or "inf", "-inf", "nan"; None stays None."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def from_json(x: Any) -> float | None:
    """A number written by `to_json` (or any number) as a float; None for none or not a number."""
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def size_of(x: Any) -> float:
    """A stored error or margin as a size to rank by: a missing one is 0, and a
    nan (an error nothing could bound) ranks with inf, above every finite one."""
    value = from_json(x)
    if value is None:
        return 0.0
    return math.inf if math.isnan(value) else value
