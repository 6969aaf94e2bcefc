"""Embedding gather and element-wise sums.

Variants:
1. `embed`: the rows of a vocabulary slice `[vocab_start, vocab_start + V_local)`; ids outside
   the slice give zero rows, so the sum over cores (an all-reduce) is the full lookup, as in
   Megatron's vocabulary-parallel embedding.
2. `add`: `out = a + b` (residual connections); `add_bias`: `x += bias` by row.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tilesim.device.cost import KernelCost


@njit(cache=True)
def _embed(ids, table, vocab_start, out):  # ids (M,), table (V, H), out (M, H)
    v_local, hidden = table.shape
    for m in range(ids.shape[0]):
        r = ids[m] - vocab_start
        if 0 <= r < v_local:
            for i in range(hidden):
                out[m, i] = table[r, i]
        else:
            for i in range(hidden):
                out[m, i] = 0.0


@njit(cache=True)
def _add(a, b, out):
    for i in range(a.shape[0]):
        out[i] = a[i] + b[i]


@njit(cache=True)
def _add_bias(x, bias):  # x (M, N), bias (N,)
    for m in range(x.shape[0]):
        for n in range(x.shape[1]):
            x[m, n] += bias[n]


def embed(ids: np.ndarray, table: np.ndarray, vocab_start: int, out: np.ndarray) -> np.ndarray:
    """out[m] = table[ids[m] - vocab_start] when inside this core's slice, else zeros."""
    _embed(ids, table, np.int64(vocab_start), out)
    return out


def add(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    _add(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


def add_bias(x: np.ndarray, bias: np.ndarray) -> np.ndarray:
    _add_bias(x, bias)
    return x


def embed_cost(m: int, hidden: int, *, weight_bytes: float = 4, act_bytes: int = 4) -> KernelCost:
    return KernelCost(
        "embed",
        "elementwise",
        0.0,
        "fp32",
        {"weights": m * hidden * weight_bytes, "activations": m * hidden * act_bytes},
    )


def add_cost(n: int, *, act_bytes: int = 4, dtype: str = "fp32") -> KernelCost:
    return KernelCost("add", "elementwise", float(n), dtype, {"activations": 3 * n * act_bytes})
