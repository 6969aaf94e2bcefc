"""What each collective must produce, computed with plain numpy in float64, and how close
a result must be (the command line checks every run against these).

Exact for integers, max and min, and for sums whose every partial sum is an integer the
data type holds (as nccl-tests chooses its inputs); within `numerics.sum_error_bound`
for other float sums.
"""

from __future__ import annotations

import numpy as np

from tilesim.collectives.numerics import REDUCE_OPS, sum_error_bound
from tilesim.collectives.schedule import bounds


def expected(op: str, inputs: list[np.ndarray], reduce_op: str, root: int = 0) -> list[np.ndarray]:
    """Every core's expected result, in float64 (cores that expect the same share one array)."""
    p = len(inputs)
    if op == "broadcast":
        return [np.asarray(inputs[root], np.float64)] * p
    if op == "allgather":
        return [np.concatenate([np.asarray(v, np.float64) for v in inputs])] * p
    if op == "alltoall":
        b = bounds(len(inputs[0]), p)
        return [np.concatenate([np.asarray(x[b[i] : b[i + 1]], np.float64) for x in inputs]) for i in range(p)]
    total = _reduce(inputs, reduce_op)
    if op == "allreduce":
        return [total] * p
    b = bounds(len(total), p)  # reducescatter
    return [total[b[i] : b[i + 1]] for i in range(p)]


def _reduce(inputs: list[np.ndarray], reduce_op: str) -> np.ndarray:
    ufunc = REDUCE_OPS[reduce_op]
    total = np.asarray(inputs[0], np.float64).copy()
    for x in inputs[1:]:
        ufunc(total, np.asarray(x, np.float64), out=total)
    if inputs[0].dtype.kind in "iu":  # integers wrap around as the data type does
        total = total.astype(np.int64).astype(inputs[0].dtype).astype(np.float64)
    return total


def tolerance(
    op: str, inputs: list[np.ndarray], dtype: str, reduce_op: str, accumulate: str, root: int = 0
) -> list[np.ndarray]:
    p = len(inputs)
    if op not in ("allreduce", "reducescatter") or reduce_op != "sum" or dtype == "int32":
        return [np.zeros(1)] * p  # exact (broadcasts against any length)
    bound = sum_error_bound(inputs, dtype, accumulate)
    if op == "allreduce":
        return [bound] * p
    b = bounds(len(bound), p)
    return [bound[b[i] : b[i + 1]] for i in range(p)]
