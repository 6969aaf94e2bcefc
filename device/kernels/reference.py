"""Float64 numpy definitions of every kernel: what the numba kernels must match.

Each function takes the kernel's inputs, computes in float64 with plain numpy, and returns
a new array. They are slow and obvious on purpose: tests compare the kernels with them.
"""

from __future__ import annotations

import math

import numpy as np


def _f64(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    x, w = _f64(x, w)
    y = x @ w.T
    return y if bias is None else y + np.asarray(bias, np.float64)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    x, w, b = _f64(x, w, b)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x, w = _f64(x, w)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    (x,) = _f64(x)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_exact(x: np.ndarray) -> np.ndarray:
    (x,) = _f64(x)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def silu(x: np.ndarray) -> np.ndarray:
    (x,) = _f64(x)
    return x / (1 + np.exp(-x))


def relu(x: np.ndarray) -> np.ndarray:
    (x,) = _f64(x)
    return np.maximum(x, 0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    (x,) = _f64(x)
    return 1 / (1 + np.exp(-x))


def relu_square(x: np.ndarray) -> np.ndarray:
    return relu(x) ** 2


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    return silu(gate) * np.asarray(up, np.float64)


def softmax_rows(x: np.ndarray) -> np.ndarray:
    (x,) = _f64(x)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, rot: int, style: str) -> np.ndarray:
    """x (M, H, D) rotated at `positions`; angles computed in float64 from `inv_freq`."""
    (x,) = _f64(x)
    out = x.copy()
    ang = np.asarray(positions, np.float64)[:, None] * np.asarray(inv_freq, np.float64)[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]  # (M, 1, rot/2)
    half = rot // 2
    if style == "neox":
        a, b = x[..., :half], x[..., half:rot]
        out[..., :half] = a * c - b * s
        out[..., half:rot] = b * c + a * s
    else:
        a, b = x[..., 0:rot:2], x[..., 1:rot:2]
        out[..., 0:rot:2] = a * c - b * s
        out[..., 1:rot:2] = b * c + a * s
    return out


def attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    start: np.ndarray,
    valid: np.ndarray,
    scale: float,
    window: int = 0,
    slopes: np.ndarray | None = None,
) -> np.ndarray:
    q, k_cache, v_cache = _f64(q, k_cache, v_cache)
    batch, t_len, hq, _ = q.shape
    group = hq // k_cache.shape[1]
    out = np.zeros_like(q)
    for b in range(batch):
        for t in range(min(t_len, int(valid[b]))):
            p = int(start[b]) + t
            lo = max(0, p - window + 1) if window > 0 else 0
            for h in range(hq):
                k = k_cache[b, h // group, lo : p + 1]
                v = v_cache[b, h // group, lo : p + 1]
                scores = k @ q[b, t, h] * scale
                if slopes is not None:
                    scores = scores + float(slopes[h]) * np.arange(lo, p + 1)
                probs = np.exp(scores - scores.max())
                out[b, t, h] = (probs / probs.sum()) @ v
    return out


def embed(ids: np.ndarray, table: np.ndarray, vocab_start: int) -> np.ndarray:
    (table,) = _f64(table)
    out = np.zeros((len(ids), table.shape[1]))
    local = np.asarray(ids) - vocab_start
    inside = (local >= 0) & (local < table.shape[0])
    out[inside] = table[local[inside]]
    return out


def moe(x, router, gates, ups, downs, k: int) -> np.ndarray:
    """Mixtral's sparse MLP in float64: softmax router, top k renormalised, SwiGLU experts."""
    x, router = _f64(x, router)
    logits = x @ router.T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(p, idx, -1)
    w /= w.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        for e, weight in zip(idx[r], w[r], strict=True):
            g, u, d = _f64(gates[e], ups[e], downs[e])
            out[r] += weight * (silu_mul(g @ x[r], u @ x[r]) @ d.T)
    return out


def token_shift(x, state, start, valid, tokens: int):
    """(shifted rows, new state) in float64; see recurrent.shift."""
    (x,) = _f64(x)
    state = np.array(state, np.float64)
    out = np.zeros_like(x)
    for b in range(state.shape[0]):
        rows = x[b * tokens : (b + 1) * tokens]
        out[b * tokens] = state[b] if start[b] > 0 else 0.0
        out[b * tokens + 1 : (b + 1) * tokens] = rows[:-1]
        if valid[b] > 0:
            state[b] = rows[valid[b] - 1]
    return out, state


def wkv(k, v, time_decay, time_first, state, start, valid, tokens: int):
    """RWKV-4's WKV in float64, in its plain form: out_t = (a + e^(u + k_t) v_t) / (b + e^(u + k_t)),
    then a <- e^w a + e^k_t v_t, b <- e^w b + e^k_t, w = -exp(time_decay). `state` is (a, b) as
    numerator and denominator without the running maximum (that is only for fp32's range)."""
    k, v, decay, first = _f64(k, v, time_decay, time_first)
    a, b_ = (np.array(s, np.float64) for s in state)
    out = np.zeros_like(k)
    w = np.exp(-np.exp(decay))
    for s in range(a.shape[0]):
        if start[s] == 0:
            a[s], b_[s] = 0.0, 0.0
        for t in range(valid[s]):
            r = s * tokens + t
            e = np.exp(first + k[r])
            out[r] = (a[s] + e * v[r]) / (b_[s] + e)
            a[s] = w * a[s] + np.exp(k[r]) * v[r]
            b_[s] = w * b_[s] + np.exp(k[r])
    return out, (a, b_)
