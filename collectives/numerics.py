"""Data types, reduction operators, and the error a reduction order is allowed.

16-bit data can be reduced two ways (`accumulate`):
- `"wire"`: buffers and messages stay in the data type, so every hop rounds, as NCCL does;
- `"fp32"`: the working buffer and the messages are fp32 (twice the bytes on the wire for
  16-bit data), and the result is rounded to the data type once at the end.
Integers wrap around on overflow, so any order gives the same int32 result.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar

import numpy as np

from tilesim.errors import ConfigError


class _Dtypes(Mapping):
    """The collectives' data types by name; bf16's numpy type comes from ml_dtypes, imported
    on first use (it takes about 0.6 s, which a run without bf16 should not pay)."""

    _names = ("fp32", "fp16", "bf16", "int32")
    _numpy: ClassVar[dict[str, np.dtype]] = {
        "fp32": np.dtype(np.float32),
        "fp16": np.dtype(np.float16),
        "int32": np.dtype(np.int32),
    }

    def __getitem__(self, name: str) -> np.dtype:
        if name == "bf16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return self._numpy[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


DTYPES: Mapping[str, np.dtype] = _Dtypes()
REDUCE_OPS = {"sum": np.add, "max": np.maximum, "min": np.minimum}
ACCUMULATE = ("wire", "fp32")
_UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8, "int32": 0.0}


def dtype_of(name: str) -> np.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown collective dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: np.dtype) -> str:
    for name, d in DTYPES.items():
        if np.dtype(dtype) == d:
            return name
    raise ConfigError(f"collectives support {', '.join(DTYPES)}, not {np.dtype(dtype)}")


def working_dtype(dtype: str, accumulate: str) -> np.dtype:
    """The dtype of the working buffer and of the messages."""
    if accumulate not in ACCUMULATE:
        raise ConfigError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
    if accumulate == "fp32" and dtype in ("fp16", "bf16"):
        return DTYPES["fp32"]
    return DTYPES[dtype]


def reduce_fn(op: str):
    if op not in REDUCE_OPS:
        raise ConfigError(f"unknown reduction {op!r}; use one of {', '.join(REDUCE_OPS)}")
    ufunc = REDUCE_OPS[op]

    def combine(local: np.ndarray, incoming: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return ufunc(local, incoming, out=out)

    return combine


def unit_roundoff(dtype: str) -> float:
    return _UNIT_ROUNDOFF[dtype]


def sum_error_bound(inputs: list[np.ndarray], dtype: str, accumulate: str) -> np.ndarray:
    """Per element, the largest |computed - exact| any order of p-1 additions may give.

    Each addition rounds with unit roundoff u of the working type, so the error is at most
    gamma(p-1) * sum |x_i| with gamma(k) = k u / (1 - k u) (Higham, Accuracy and Stability
    of Numerical Algorithms, 2nd ed., eq. 4.4); accumulating in fp32 adds one final rounding
    to the data type, u_data * |sum|.
    """
    p = len(inputs)
    absolute = np.zeros(len(inputs[0]))
    exact = np.zeros(len(inputs[0]))
    for x in inputs:
        x64 = np.asarray(x, np.float64)
        exact += x64
        absolute += np.abs(x64)
    work = "fp32" if accumulate == "fp32" and dtype in ("fp16", "bf16") else dtype
    u = unit_roundoff(work)
    k = max(p - 1, 0)
    bound = (k * u / (1 - k * u)) * absolute
    if work != dtype:
        bound = bound + unit_roundoff(dtype) * (np.abs(exact) + bound)
    return bound
