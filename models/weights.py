"""Reading slices of checkpoint tensors, lazily, in canonical orientation.

An architecture names, for every canonical weight (a matrix is (out, in), as `nn.Linear`
stores it), where it lives in the checkpoint: a `WeightRef`. The file tensor may be
transposed (GPT-2's Conv1D stores (in, out)), and a canonical output row may sit at another
row of a fused or permuted tensor (`index`: canonical row -> file row). `read_weight` reads
only the rows and columns one core needs, from a `TensorReader` (safetensors or GGUF).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, eq=False)
class WeightRef:
    """Where a canonical weight is: a file tensor, maybe transposed, maybe with its rows moved."""

    tensor: str
    transpose: bool = False
    rows_map: np.ndarray | None = None  # canonical row -> file row (along the "out" axis)
    scale: float = 1.0  # multiplied in as read (RWKV's inference rescaling: powers of two, exact)
    flat: bool = False  # a vector the file stores with leading axes of size 1 (RWKV's (1, 1, H) mixes)


class TensorReader(Protocol):
    """A checkpoint's tensors by name, read in part: `read(name, rows, cols)` as float32."""

    path: str

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, rows: slice, cols: slice | None) -> np.ndarray: ...


def _out_rows(ref: WeightRef, out: slice, length: int) -> tuple[slice, np.ndarray | None]:
    """File rows for canonical rows `out`: a contiguous slice, plus a gather if not contiguous."""
    start, stop, _ = out.indices(length)
    if ref.rows_map is None:
        return slice(start, stop), None
    wanted = np.asarray(ref.rows_map[start:stop])
    if len(wanted) == 0:
        return slice(0, 0), None
    lo, hi = int(wanted.min()), int(wanted.max()) + 1
    if hi - lo == len(wanted) and np.array_equal(wanted, np.arange(lo, hi)):
        return slice(lo, hi), None
    return slice(lo, hi), wanted - lo


def read_weight(
    reader: TensorReader, ref: WeightRef, shape: tuple[int, ...], out: slice, cols: slice | None
) -> np.ndarray:
    """Canonical rows `out` (and columns `cols` of a matrix) of the weight `ref`, as float32."""
    file_rows, gather = _out_rows(ref, out, shape[0])
    if len(shape) == 1 and ref.flat:
        data = np.asarray(reader.read(ref.tensor, slice(None), None)).reshape(-1)[file_rows]
        return _scaled(np.ascontiguousarray(data if gather is None else data[gather], dtype=np.float32), ref)
    if len(shape) == 1:
        data = reader.read(ref.tensor, file_rows, None)
        return _scaled(np.ascontiguousarray(data if gather is None else data[gather], dtype=np.float32), ref)
    if ref.transpose:  # the file is (in, out): our rows are its columns
        data = reader.read(ref.tensor, cols or slice(None), file_rows).T
    else:
        data = reader.read(ref.tensor, file_rows, cols)
    if gather is not None:
        data = data[gather]
    return _scaled(np.ascontiguousarray(data, dtype=np.float32), ref)


def _scaled(data: np.ndarray, ref: WeightRef) -> np.ndarray:
    if ref.scale != 1.0:
        data *= np.float32(ref.scale)
    return data
