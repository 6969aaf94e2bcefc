"""Causal self-attention over the KV cache, for prefill (T tokens) and decode (T = 1).

The cache holds, per sequence and key/value head, `S` positions: k_cache, v_cache are
(B, Hkv, S, D). Query row t of sequence b sits at absolute position `start[b] + t` and sees
keys 0..that position (or the last `window` of them). Query head h reads key/value head
h // (Hq / Hkv) (grouped-query attention). Scores are q.k * scale, the softmax is
max-subtracted, probabilities are normalised before they weight the values, as
transformers' eager attention does. Rows t >= valid[b] are padding and come out as zeros.

Variants:
1. `_attention`: one thread per (sequence, head, query row), scores in a scratch row.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from tilesim.device.cost import KernelCost


@njit(cache=True, fastmath=False, parallel=True)
def _attention(q, k_cache, v_cache, start, valid, scale, window, out):
    batch, t_len, hq, d = q.shape
    hkv = k_cache.shape[1]
    group = hq // hkv
    for idx in prange(batch * hq * t_len):
        b = idx // (hq * t_len)
        h = (idx // t_len) % hq
        t = idx % t_len
        if t >= valid[b]:
            for i in range(d):
                out[b, t, h, i] = 0.0
            continue
        g = h // group
        p = start[b] + t
        lo = 0
        if window > 0 and p - window + 1 > 0:
            lo = p - window + 1
        n = p + 1 - lo
        scores = np.empty(n, dtype=np.float32)
        mx = np.float32(-np.inf)
        for j in range(n):
            acc = np.float32(0.0)
            for i in range(d):
                acc += q[b, t, h, i] * k_cache[b, g, lo + j, i]
            acc = acc * scale
            scores[j] = acc
            if acc > mx:
                mx = acc
        total = np.float32(0.0)
        for j in range(n):
            e = np.float32(math.exp(scores[j] - mx))
            scores[j] = e
            total += e
        for i in range(d):
            out[b, t, h, i] = 0.0
        for j in range(n):
            pj = scores[j] / total
            for i in range(d):
                out[b, t, h, i] += pj * v_cache[b, g, lo + j, i]


@njit(cache=True)
def _kv_write(k, v, k_cache, v_cache, start, valid):  # k, v (B, T, Hkv, D)
    batch, t_len, hkv, d = k.shape
    for b in range(batch):
        for t in range(min(t_len, valid[b])):
            p = start[b] + t
            for h in range(hkv):
                for i in range(d):
                    k_cache[b, h, p, i] = k[b, t, h, i]
                    v_cache[b, h, p, i] = v[b, t, h, i]


def attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    start: np.ndarray,
    valid: np.ndarray,
    scale: float,
    out: np.ndarray,
    window: int = 0,
) -> np.ndarray:
    """q (B, T, Hq, D) against the cache (B, Hkv, S, D) -> out (B, T, Hq, D); see module doc."""
    _attention(q, k_cache, v_cache, start, valid, np.float32(scale), int(window), out)
    return out


def kv_write(
    k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start: np.ndarray, valid: np.ndarray
) -> None:
    """Store the new keys and values (B, T, Hkv, D) at positions start[b] + t of the cache."""
    _kv_write(k, v, k_cache, v_cache, start, valid)


def attention_cost(
    batch: int,
    t: int,
    context: int,
    hq: int,
    hkv: int,
    d: int,
    *,
    act_bytes: int = 4,
    kv_bytes: float = 4,
    dtype: str = "fp32",
) -> KernelCost:
    """Scores and weighted sum: 4*B*T*Hq*ctx*D FLOPs (+ softmax); the cache read once per head group.

    `context` is the number of cached positions attended to (the compiled bucket).
    """
    flops = 4.0 * batch * t * hq * context * d + 5.0 * batch * t * hq * context
    kv = 2.0 * batch * hkv * context * d * kv_bytes
    acts = 2.0 * batch * t * hq * d * act_bytes
    return KernelCost("attention", "attention", flops, dtype, {"kv_cache": kv, "activations": acts})


def kv_write_cost(batch: int, t: int, hkv: int, d: int, *, act_bytes: int = 4, kv_bytes: float = 4) -> KernelCost:
    n = 2.0 * batch * t * hkv * d
    return KernelCost("kv_write", "elementwise", 0.0, "fp32", {"activations": n * act_bytes, "kv_cache": n * kv_bytes})
