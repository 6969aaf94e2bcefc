"""Normalisations over the last axis of `(M, K)` rows: layer norm and RMS norm, fp32 accumulation.

Variants:
1. `_layer_norm`: two passes (mean, then variance of the centred values), as torch does.
2. `_rms_norm`: `x / sqrt(mean(x^2) + eps) * w` (Llama's form: the weight multiplies last).
3. `add_norm`: a residual add `s = a + b` and the norm of s in one call, bit for bit what
   `elementwise.add` then the norm give (a decode step pays per call, and this pair comes
   twice a layer).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tilesim.device.cost import KernelCost


@njit(cache=True, fastmath=False)
def _layer_norm(x, w, b, eps, out):  # x (M, K), w (K,), b (K,), out (M, K)
    m_rows, k_dim = x.shape
    for m in range(m_rows):
        mean = np.float32(0.0)
        for k in range(k_dim):
            mean += x[m, k]
        mean = mean / np.float32(k_dim)
        var = np.float32(0.0)
        for k in range(k_dim):
            d = x[m, k] - mean
            var += d * d
        var = var / np.float32(k_dim)
        inv = np.float32(1.0) / np.float32(math.sqrt(var + eps))
        for k in range(k_dim):
            out[m, k] = (x[m, k] - mean) * inv * w[k] + b[k]


@njit(cache=True, fastmath=False)
def _rms_norm(x, w, eps, out):  # x (M, K), w (K,), out (M, K)
    m_rows, k_dim = x.shape
    for m in range(m_rows):
        ss = np.float32(0.0)
        for k in range(k_dim):
            ss += x[m, k] * x[m, k]
        inv = np.float32(1.0) / np.float32(math.sqrt(ss / np.float32(k_dim) + eps))
        for k in range(k_dim):
            out[m, k] = (x[m, k] * inv) * w[k]


@njit(cache=True, fastmath=False)
def _head_rms_norm(x, w, eps, out, d):  # x, out (M, H*d), w (d,): each head's d features its own row
    m_rows, width = x.shape
    for m in range(m_rows):
        for h0 in range(0, width, d):
            _rms_norm(x[m : m + 1, h0 : h0 + d], w, eps, out[m : m + 1, h0 : h0 + d])


def head_rms_norm(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """RMS norm of each head of x (M, H * d) over its d features, weight w (d,) (Qwen3's q_norm
    and k_norm); rows may be strided views."""
    d = w.shape[0]
    if x.shape[1] % d:
        raise ValueError(f"rows of {x.shape[1]} features are not whole heads of {d}")
    _head_rms_norm(x, w, np.float32(eps), out, d)
    return out


@njit(cache=True, fastmath=False)
def _add_norm(a, b, s, layer, w, bias, eps, out):  # a, b, s, out (M, K)
    for m in range(a.shape[0]):
        for k in range(a.shape[1]):
            s[m, k] = a[m, k] + b[m, k]
    if layer:
        _layer_norm(s, w, bias, eps, out)
    else:
        _rms_norm(s, w, eps, out)


def add_norm(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, w: np.ndarray, bias: np.ndarray | None, eps: float, out: np.ndarray
) -> np.ndarray:
    """s = a + b, then out = layer_norm(s) (with `bias`) or rms_norm(s) (`bias` None)."""
    layer = bias is not None
    _add_norm(a, b, s, layer, w, bias if layer else w, np.float32(eps), out)
    return out


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """Layer norm of each row of x (M, K) with weight w and bias b (K,)."""
    _layer_norm(x, w, b, np.float32(eps), out)
    return out


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """RMS norm of each row of x (M, K) with weight w (K,)."""
    _rms_norm(x, w, np.float32(eps), out)
    return out


def norm_cost(m: int, k: int, *, kind: str = "rms_norm", act_bytes: int = 4, dtype: str = "fp32") -> KernelCost:
    """About 5 FLOPs per element (layer norm 7); x read, out written, the weights read."""
    per = 7 if kind == "layer_norm" else 5
    params = (2 if kind == "layer_norm" else 1) * k * 4
    return KernelCost(
        kind, "elementwise", per * m * k, dtype, {"activations": 2 * m * k * act_bytes, "weights": params}
    )
