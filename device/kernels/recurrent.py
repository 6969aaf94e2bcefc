"""RWKV-4's recurrent pieces, as transformers' `RwkvForCausalLM` computes them in fp32.

- `shift`: token shift. Row t of a sequence gets the previous token's features: row t-1,
  or for its first row the sequence's state (the last row of its previous step), zeros when
  the sequence starts (start == 0); the state then keeps the last valid row.
- `mix`: x * m + shifted * (1 - m), with a mixing weight per feature.
- `wkv`: the WKV recurrence per channel, in its numerically stable form (a running maximum
  `max` beside the numerator and denominator, transformers' `rwkv_linear_attention_cpu`):
      out_t = (e1 num + e2 v_t) / (e1 den + e2),  e1 = exp(max - q), e2 = exp(k_t + u - q),
      q = max(max, k_t + u); then the state decays by w = -exp(time_decay) and takes k_t, v_t.
  A starting sequence begins from num = den = 0, max = -1e30 (transformers' initial state).
Each core runs its own channels: the recurrence never crosses channels, so it stays local.
Rows are (sequence, token) in order, `tokens` per sequence; rows past `valid` are left as
they are and change no state.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tilesim.device.cost import KernelCost

START_MAX = np.float32(-1e30)


@njit(cache=True)
def _shift(x, state, start, valid, tokens, out):
    batch, width = state.shape
    for b in range(batch):
        base = b * tokens
        for t in range(tokens):
            r = base + t
            if t > 0:
                for i in range(width):
                    out[r, i] = x[r - 1, i]
            elif start[b] > 0:
                for i in range(width):
                    out[r, i] = state[b, i]
            else:
                for i in range(width):
                    out[r, i] = np.float32(0.0)
        if valid[b] > 0:
            for i in range(width):
                state[b, i] = x[base + valid[b] - 1, i]


@njit(cache=True)
def _mix(x, shifted, m, out):
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            out[r, i] = x[r, i] * m[i] + shifted[r, i] * (np.float32(1.0) - m[i])


@njit(cache=True)
def _wkv(k, v, time_decay, time_first, num, den, mx, start, valid, tokens, out):
    batch, channels = num.shape
    for b in range(batch):
        for c in range(channels):
            if start[b] > 0:
                n, d, m = num[b, c], den[b, c], mx[b, c]
            else:
                n, d, m = np.float32(0.0), np.float32(0.0), START_MAX
            u = time_first[c]
            w = -np.float32(math.exp(time_decay[c]))
            for t in range(valid[b]):
                r = b * tokens + t
                kk, vv = k[r, c], v[r, c]
                q = max(m, kk + u)
                e1 = np.float32(math.exp(m - q))
                e2 = np.float32(math.exp(kk + u - q))
                out[r, c] = (e1 * n + e2 * vv) / (e1 * d + e2)
                q = max(m + w, kk)
                e1 = np.float32(math.exp(m + w - q))
                e2 = np.float32(math.exp(kk - q))
                n = e1 * n + e2 * vv
                d = e1 * d + e2
                m = q
            if valid[b] > 0:
                num[b, c], den[b, c], mx[b, c] = n, d, m


def shift(x: np.ndarray, state: np.ndarray, start: np.ndarray, valid: np.ndarray, tokens: int, out: np.ndarray):
    """x, out (batch * tokens, H); state (batch, H), updated."""
    _shift(x, state, start, valid, tokens, out)
    return out


def mix(x: np.ndarray, shifted: np.ndarray, m: np.ndarray, out: np.ndarray) -> np.ndarray:
    _mix(x, shifted, m, out)
    return out


def wkv(k, v, time_decay, time_first, num, den, mx, start, valid, tokens: int, out):
    """k, v, out (batch * tokens, C); the state num, den, max (batch, C), updated."""
    _wkv(k, v, time_decay, time_first, num, den, mx, start, valid, tokens, out)
    return out


def shift_cost(rows: int, batch: int, width: int, *, act_bytes: int = 4) -> KernelCost:
    """A copy of each row (rows in and out) and the state read and written."""
    traffic = {"activations": 2 * rows * width * act_bytes, "recurrent_state": 2 * batch * width * 4}
    return KernelCost("token_shift", "elementwise", 0.0, "fp32", traffic)


def wkv_cost(rows: int, batch: int, channels: int, *, act_bytes: int = 4) -> KernelCost:
    """About 20 operations per row and channel (4 exponentials counted as 4 each, the rest
    one); k and v in, out written; the three state arrays read and written."""
    traffic = {"activations": 3 * rows * channels * act_bytes, "recurrent_state": 2 * 3 * batch * channels * 4}
    return KernelCost("wkv", "elementwise", 28.0 * rows * channels, "fp32", traffic)
