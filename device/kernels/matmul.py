"""Matrix products: `out = x @ w.T + bias`, with weights in `(N, K)` rows as HF stores them.

Variants:
1. `_linear_f32`: every output feature is one thread's dot products over contiguous rows
   (`vector_ir.fp32_row`: 16 lanes of fused multiply-adds, then a fixed pairwise sum), so
   each sum's order is fixed by the code, not by the thread count or by LLVM's choices:
   the same bits on every x86-64 target, and a row of a prefill gets what a decode step
   computing it alone gets. With M = 1 this is the matrix-vector product of decode: it
   streams each weight row once.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tilesim.device.cost import KernelCost
from tilesim.device.kernels import jit_cache
from tilesim.device.kernels import vector_ir as ir

jit_cache.depends_on(__file__, ir)

_EMPTY = np.zeros(0, dtype=np.float32)


@njit(cache=True)
def _f32_rows(x, w, bias, out, first, last):  # output features first..last
    has_bias = bias.shape[0] > 0
    whole = x.shape[0] - x.shape[0] % ir.DENSE_ROWS
    for n in range(first, last):
        for m0 in range(0, whole, ir.DENSE_ROWS):  # each weight row loaded once for DENSE_ROWS rows of x
            sums = ir.fp32_rows(x, m0, w[n])
            for i in range(ir.DENSE_ROWS):
                out[m0 + i, n] = sums[i] + bias[n] if has_bias else sums[i]
        for m in range(whole, x.shape[0]):
            acc = ir.fp32_row(x[m], w[n])
            if has_bias:
                acc += bias[n]
            out[m, n] = acc


@njit(cache=True, parallel=True)
def _linear_f32(x, w, bias, out):  # x (M, K), w (N, K) C-contiguous, bias (N,) or (0,), out (M, N)
    for n in prange(w.shape[0]):
        _f32_rows(x, w, bias, out, n, n + 1)


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """`out[m, n] = sum_k x[m, k] * w[n, k] + bias[n]`; x (M, K), w (N, K), out (M, N), fp32."""
    _linear_f32(np.ascontiguousarray(x), np.ascontiguousarray(w), _EMPTY if bias is None else bias, out)
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
    variant: str = "",
) -> KernelCost:
    """2*M*N*K FLOPs; weights read once, x read and out written once."""
    weights = n * k * weight_bytes_per_elem + (n * act_bytes if bias else 0)
    activations = (m * k + m * n) * act_bytes
    traffic = {"weights": weights, "activations": activations}
    return KernelCost(name, "matmul", 2.0 * m * n * k, dtype, traffic, shape=(m, n, k), variant=variant)
