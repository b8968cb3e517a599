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


def round_through(value: float, stages, dtype: str) -> float:
    """`value` rounded through successive formats, as a framework stores a
    hyperparameter (`input_dtypes`: [float32, tensor] is a Python float made a
    float32 tensor, then cast to the parameter's `dtype`)."""
    x = float(value)
    with np.errstate(over="ignore"):
        for stage in stages:
            x = float(round_to(np.float64(x), dtype if stage == "tensor" else stage))
    return x


#: Precision in bits (with the implicit bit) and the smallest normal exponent
#: of each format: what `ulp` and the rounding model need.
PRECISION: dict[str, tuple[int, int]] = {
    "float16": (11, -14),
    "bfloat16": (8, -126),
    "float32": (24, -126),
    "float64": (53, -1022),
}


def unit_roundoff(name: str) -> float:
    """u = 2**-p: the largest relative error of one rounding to nearest."""
    return 2.0 ** -PRECISION[name][0]


def ulp(values, name: str) -> np.ndarray:
    """The spacing of the named format at |values| (float64 result).

    Below the normal range the spacing is that of the subnormals; at 0 it is
    the smallest subnormal; at inf or nan it is inf.
    """
    bits, emin = PRECISION[name]
    a = np.abs(np.asarray(values, dtype=np.float64))
    with np.errstate(all="ignore"):
        _, e = np.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
        e = np.where(a == 0, emin, np.maximum(e - 1, emin))
        out = np.ldexp(1.0, e - (bits - 1))
    return np.where(np.isfinite(a), out, np.inf)
