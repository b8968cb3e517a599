"""Floating-point formats by name, and rounding of inputs into them.

Every comparison starts from the same dtype-rounded inputs: a float32 case
gives the framework float32 tensors and gives the float64 kernel exactly
those float32 values. bfloat16 comes from ml_dtypes (numpy has none).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}


def numpy_dtype(name: str) -> np.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (known: {', '.join(DTYPES)})") from None


def round_to(values, name: str) -> np.ndarray:
    """`values` rounded to the named dtype (nearest, ties to even), held as float64."""
    return np.asarray(values, dtype=np.float64).astype(numpy_dtype(name)).astype(np.float64)
