"""Matrix products: `out = x @ w.T + bias`, with weights in `(N, K)` rows as HF stores them.

Variants:
1. `_linear_f32`: every output feature is one thread's dot products over contiguous rows,
   so the order of each sum is fixed whatever the thread count (bit-identical reruns).
   With M = 1 this is the matrix-vector product of decode: it streams each weight row once.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tilesim.device.cost import KernelCost

_EMPTY = np.zeros(0, dtype=np.float32)


@njit(cache=True, fastmath=True, parallel=True)
def _linear_f32(x, w, bias, out):  # x (M, K), w (N, K), bias (N,) or (0,), out (M, N)
    m_rows, k_dim = x.shape
    n_rows = w.shape[0]
    has_bias = bias.shape[0] > 0
    for n in prange(n_rows):
        for m in range(m_rows):
            acc = np.float32(0.0)
            for k in range(k_dim):
                acc += x[m, k] * w[n, k]
            if has_bias:
                acc += bias[n]
            out[m, n] = acc


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """`out[m, n] = sum_k x[m, k] * w[n, k] + bias[n]`; x (M, K), w (N, K), out (M, N), fp32."""
    _linear_f32(x, w, _EMPTY if bias is None else bias, out)
    return out


def linear_cost(
    m: int,
    n: int,
    k: int,
    *,
    weight_bytes_per_elem: float = 4,
    act_bytes: int = 4,
    bias: bool = False,
    dtype: str = "fp32",
    name: str = "linear",
) -> KernelCost:
    """2*M*N*K FLOPs; weights read once, x read and out written once."""
    weights = n * k * weight_bytes_per_elem + (n * act_bytes if bias else 0)
    activations = (m * k + m * n) * act_bytes
    return KernelCost(name, "matmul", 2.0 * m * n * k, dtype, {"weights": weights, "activations": activations})
