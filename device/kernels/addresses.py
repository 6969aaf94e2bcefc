"""Every emulated core's arrays handed to one kernel call as a table of addresses.

An op of a step runs on every core, each core's operands in its own memory. Passing them as
numba typed lists costs a compile of the list type in every process (0.2-0.3 s per element
type, not cached), and as tuples a compile per tuple length (per TP degree). A table of
addresses is one int64 array whatever the degree: `Table` records each array's address
and keeps the array alive; inside a kernel, `at(table[i, j], like, shape)` is the array
again (C order). Only C-contiguous arrays are accepted, so the shape is all it needs.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic


@intrinsic
def _pointer(typingctx, address, like):  # pragma: no cover - compiled
    """A pointer to `like`'s element type at the integer `address`."""
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@njit(inline="always")
def at(address, like, shape):  # pragma: no cover - compiled
    """The C-order array of `like`'s dtype and `shape` at `address` (a `Table` entry)."""
    return carray(_pointer(address, like), shape)


class Table:
    """Rows of addresses and sizes of C-contiguous arrays that stay alive as long as the table."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []
        self._alive: list[np.ndarray] = []

    def add(self, *cells: np.ndarray | int) -> None:
        """One row: an array gives its address, an int is kept as it is."""
        row = []
        for cell in cells:
            if isinstance(cell, np.ndarray):
                if not cell.flags.c_contiguous:
                    raise ValueError("an address table holds C-contiguous arrays only")
                self._alive.append(cell)
                row.append(cell.ctypes.data)
            else:
                row.append(int(cell))
        self.rows.append(row)

    def array(self) -> np.ndarray:
        return np.array(self.rows, dtype=np.int64).reshape(len(self.rows), -1)


def contiguous(*arrays: np.ndarray | None) -> bool:
    """Whether everything given (None skipped) is a C-contiguous array: what `Table` takes."""
    return all(a is None or (isinstance(a, np.ndarray) and a.flags.c_contiguous) for a in arrays)


@njit(cache=True)
def row_starts(arrays):
    """Where each array's rows start, the arrays' rows end to end. Apart from the parallel
    kernels because there np.zeros would be a parallel region of its own (a thread-pool
    launch of a few microseconds for a handful of numbers)."""
    starts = np.zeros(len(arrays) + 1, np.int64)
    for w in range(len(arrays)):
        starts[w + 1] = starts[w] + arrays[w].shape[0]
    return starts
