"""Rotary position embedding, applied in place to the first `rot` features of each head.

Variants:
1. `rope_neox` (GPT-NeoX, Llama): features i and i + rot/2 form a pair ("rotate half").
2. `rope_gptj` (GPT-J): features 2i and 2i + 1 form a pair ("rotate every two").
Both read `cos`/`sin` tables of shape (positions, rot/2) built once by `rope_tables`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tilesim.device.cost import KernelCost


def rope_inv_freq(rot: int, base: float) -> np.ndarray:
    """`1 / base^(2i/rot)` for i < rot/2, in fp32 as transformers computes it."""
    exponents = np.arange(0, rot, 2, dtype=np.int64).astype(np.float32) / np.float32(rot)
    return (np.float32(1.0) / (np.float32(base) ** exponents)).astype(np.float32)


def rope_tables(positions: int, inv_freq: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of `position * inv_freq`, each (positions, rot/2), fp32, times `scale`
    (YaRN's attention scaling) where it is not 1."""
    angles = np.arange(positions, dtype=np.float32)[:, None] * inv_freq[None, :].astype(np.float32)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    if scale != 1.0:
        cos, sin = cos * np.float32(scale), sin * np.float32(scale)  # float32 times float32 stays float32
    return cos, sin


@njit(cache=True)
def _rope_neox(x, positions, cos, sin, rot):  # x (M, H, D), positions (M,)
    half = rot // 2
    m_rows, heads = x.shape[0], x.shape[1]
    for mh in range(m_rows * heads):
        m, h = mh // heads, mh % heads
        p = positions[m]
        for i in range(half):
            c, s = cos[p, i], sin[p, i]
            a, b = x[m, h, i], x[m, h, i + half]
            x[m, h, i] = a * c - b * s
            x[m, h, i + half] = b * c + a * s


@njit(cache=True)
def _rope_gptj(x, positions, cos, sin, rot):
    half = rot // 2
    m_rows, heads = x.shape[0], x.shape[1]
    for mh in range(m_rows * heads):
        m, h = mh // heads, mh % heads
        p = positions[m]
        for i in range(half):
            c, s = cos[p, i], sin[p, i]
            a, b = x[m, h, 2 * i], x[m, h, 2 * i + 1]
            x[m, h, 2 * i] = a * c - b * s
            x[m, h, 2 * i + 1] = b * c + a * s


def rope(x: np.ndarray, positions: np.ndarray, cos: np.ndarray, sin: np.ndarray, rot: int, style: str) -> np.ndarray:
    """Rotate x (M, H, D) in place at `positions` (M,); `style` is "neox" or "gptj"."""
    if rot:
        (_rope_neox if style == "neox" else _rope_gptj)(x, positions, cos, sin, rot)
    return x


def rope_cost(m: int, heads: int, rot: int, *, act_bytes: int = 4, dtype: str = "fp32") -> KernelCost:
    """6 FLOPs per rotated pair; the rotated features read and written, the tables read."""
    pairs = m * heads * rot // 2
    return KernelCost("rope", "elementwise", 6 * pairs, dtype, {"activations": 4 * pairs * act_bytes + 2 * m * rot * 4})
