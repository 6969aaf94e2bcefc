"""Causal self-attention over the KV cache, for prefill (T tokens) and decode (T = 1).

The cache holds, per sequence and key/value head, `S` positions: k_cache, v_cache are
(B, Hkv, S, D). Query row t of sequence b sits at absolute position `start[b] + t` and sees
keys 0..that position (or the last `window` of them). Query head h reads key/value head
h // (Hq / Hkv) (grouped-query attention). Scores are q.k * scale, the softmax is
max-subtracted, probabilities are normalised before they weight the values, as
transformers' eager attention does. Rows t >= valid[b] are padding and come out as zeros.
ALiBi (BLOOM) adds slopes[h] * j to the score of key position j (softmax is shift-invariant,
so this is the relative bias); zero slopes change no bit.

Variants:
1. `_attention`: one thread per (sequence, head, query row), scores in a scratch row; q
   and the cache C-contiguous (each q.k is `vector_ir.fp32_row`'s sum, four keys a call
   through `fp32_rows`; the weighted values are `weighted_rows`', a scalar loop's bits).
2. `_attention_codes`: the same over a cache kept in a narrower format: 16-bit codes
   (fp16, bf16) or 8-bit codes (fp8, or int8 with one scale per position and head), decoded
   through a table as they are read (`encode_kv` makes the codes).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from tilesim.device.cost import KernelCost
from tilesim.device.kernels import jit_cache
from tilesim.device.kernels import vector_ir as ir

jit_cache.depends_on(__file__, ir)


@njit(cache=True)
def attend_one(q, k_cache, v_cache, start, valid, scale, window, slopes, out, idx):
    """Query row `idx` of the (sequence, head, row) order of `_attention`: the unit of work
    every fp32-cache attention kernel shares (cores.py runs it over every core)."""
    _, t_len, hq, d = q.shape
    group = hq // k_cache.shape[1]
    b = idx // (hq * t_len)
    h = (idx // t_len) % hq
    t = idx % t_len
    if t >= valid[b]:
        for i in range(d):
            out[b, t, h, i] = 0.0
        return
    g = h // group
    p = start[b] + t
    lo = 0
    if window > 0 and p - window + 1 > 0:
        lo = p - window + 1
    n = p + 1 - lo
    scores = np.empty(n, dtype=np.float32)
    mx = np.float32(-np.inf)
    keys, query = k_cache[b, g], q[b, t, h]
    whole = n - n % ir.DENSE_ROWS
    for j0 in range(0, whole, ir.DENSE_ROWS):  # several keys against the query a call: fp32_row's bits
        dots = ir.fp32_rows(keys, lo + j0, query)
        for i in range(ir.DENSE_ROWS):
            acc = dots[i] * scale + slopes[h] * np.float32(lo + j0 + i)
            scores[j0 + i] = acc
            if acc > mx:
                mx = acc
    for j in range(whole, n):
        acc = ir.fp32_row(query, keys[lo + j]) * scale + slopes[h] * np.float32(lo + j)
        scores[j] = acc
        if acc > mx:
            mx = acc
    total = np.float32(0.0)
    for j in range(n):
        e = np.float32(math.exp(scores[j] - mx))
        scores[j] = e
        total += e
    for j in range(n):
        scores[j] = scores[j] / total
    ir.weighted_rows(scores, v_cache[b, g], lo, n, out[b, t, h])


def _attention_impl(q, k_cache, v_cache, start, valid, scale, window, slopes, out):
    batch, t_len, hq, _ = q.shape
    for idx in prange(batch * hq * t_len):
        attend_one(q, k_cache, v_cache, start, valid, scale, window, slopes, out, idx)


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


def _attention_codes_impl(
    q, k_codes, v_codes, lut, k_scale, v_scale, has_scale, start, valid, scale, window, slopes, out
):
    batch, t_len, hq, d = q.shape
    hkv = k_codes.shape[1]
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
                acc += q[b, t, h, i] * lut[k_codes[b, g, lo + j, i]]
            if has_scale:
                acc = acc * k_scale[b, g, lo + j]
            acc = acc * scale + slopes[h] * np.float32(lo + j)
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
            if has_scale:
                pj = pj * v_scale[b, g, lo + j]
            for i in range(d):
                out[b, t, h, i] += pj * lut[v_codes[b, g, lo + j, i]]


# Small problems (a decode step) run on one thread: waking the pool costs more than the work.
# Over an fp32 cache the q.k sums are `vector_ir.fp32_row` and nothing else carries a
# fast-math flag, so both variants give the same bits on every target (docs/numerics.md).
# Over codes, reassociation lets LLVM vectorize the q.k sums (a serial chain of fp32 adds
# otherwise, most of a decode step's attention time), so their order follows the target's
# vector width; no flag that assumes away infinities: the running maximum starts at -inf.
_FLAGS = {"reassoc", "contract"}
_attention_serial = njit(cache=True)(_attention_impl)
_attention_parallel = njit(cache=True, parallel=True)(_attention_impl)
_codes_serial = njit(cache=True, fastmath=_FLAGS)(_attention_codes_impl)
_codes_parallel = njit(cache=True, parallel=True, fastmath=_FLAGS)(_attention_codes_impl)
PARALLEL_WORK = 1 << 16  # query rows x heads x positions above which the thread pool pays off


def _parallel(q: np.ndarray, context: int) -> bool:
    batch, t_len, hq, _ = q.shape
    return batch * t_len * hq * context > PARALLEL_WORK


def no_slopes(heads: int) -> np.ndarray:
    """Zero ALiBi slopes: attention without position biases (adding 0 changes no bit)."""
    zeros = _ZEROS.get(heads)
    if zeros is None:
        zeros = _ZEROS[heads] = np.zeros(heads, np.float32)
    return zeros


_ZEROS: dict[int, np.ndarray] = {}


def attention_codes(
    q, k_codes, v_codes, lut, k_scale, v_scale, has_scale, start, valid, scale, window, out, slopes=None
):
    fn = _codes_parallel if _parallel(q, int(start.max()) + q.shape[1]) else _codes_serial
    slopes = no_slopes(q.shape[2]) if slopes is None else slopes
    fn(q, k_codes, v_codes, lut, k_scale, v_scale, has_scale, start, valid, scale, window, slopes, out)


@njit(cache=True)
def _scale_write(ks, vs, k_scale, v_scale, start, valid):  # ks, vs (B, T, Hkv)
    batch, t_len, hkv = ks.shape
    for b in range(batch):
        for t in range(min(t_len, valid[b])):
            for h in range(hkv):
                k_scale[b, h, start[b] + t] = ks[b, t, h]
                v_scale[b, h, start[b] + t] = vs[b, t, h]


def kv_code_dtype(fmt: str) -> np.dtype:
    return np.dtype({"fp32": np.float32, "fp16": np.uint16, "bf16": np.uint16, "fp8": np.uint8, "int8": np.uint8}[fmt])


def kv_lut(fmt: str) -> np.ndarray:
    from tilesim.device.kernels import quant

    if fmt == "fp8":
        return quant.lut_fp8("fp8_e4m3")
    return {"fp16": quant.LUT_FP16, "bf16": quant.LUT_BF16, "int8": quant.LUT_INT8}[fmt]


def encode_kv(x: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Keys or values (B, T, H, D) in fp32 as cache codes, and per-(B, T, H) scales for int8."""
    import ml_dtypes

    if fmt == "fp16":
        return x.astype(np.float16).view(np.uint16), None
    if fmt == "bf16":
        return x.astype(ml_dtypes.bfloat16).view(np.uint16), None
    if fmt == "fp8":
        return x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8), None
    absmax = np.abs(x).max(axis=-1)
    scales = np.where(absmax > 0, absmax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(x / scales[..., None]), -127, 127).astype(np.int8)
    return q.view(np.uint8), scales


def attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    start: np.ndarray,
    valid: np.ndarray,
    scale: float,
    out: np.ndarray,
    window: int = 0,
    slopes: np.ndarray | None = None,
) -> np.ndarray:
    """q (B, T, Hq, D) against the cache (B, Hkv, S, D) -> out (B, T, Hq, D); see module doc.
    `slopes` (Hq,) are ALiBi's: key position j adds slopes[h] * j to head h's scores."""
    fn = _attention_parallel if _parallel(q, int(start.max()) + q.shape[1]) else _attention_serial
    slopes = no_slopes(q.shape[2]) if slopes is None else slopes
    fn(q, k_cache, v_cache, start, valid, np.float32(scale), int(window), slopes, out)
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

    `context` is the number of cached positions attended to (the compiled bucket). A decode
    step (t = 1) reads the cache position by position: the cache is laid out (position,
    sequence, head, dim), as transformers-neuronx lays it out, so each position's keys (and
    values) of the whole batch are one contiguous piece, 2 * context pieces in all. A prefill
    attends to the keys and values it has just made, on chip (flash attention): no pieces.
    """
    flops = 4.0 * batch * t * hq * context * d + 5.0 * batch * t * hq * context
    kv = 2.0 * batch * hkv * context * d * kv_bytes
    acts = 2.0 * batch * t * hq * d * act_bytes
    pieces = 2.0 * context if t == 1 else 0.0
    rows = float(batch * t * hq)
    return KernelCost(
        "attention", "attention", flops, dtype, {"kv_cache": kv, "activations": acts}, pieces=pieces, rows=rows
    )


def kv_write_cost(batch: int, t: int, hkv: int, d: int, *, act_bytes: int = 4, kv_bytes: float = 4) -> KernelCost:
    """The new keys and values into the cache: one piece per sequence for each of K and V
    when a sequence writes one position (decode), per position otherwise (prefill rows of
    one sequence are `batch` rows apart in the cache's layout, contiguous at batch 1)."""
    n = 2.0 * batch * t * hkv * d
    pieces = 2.0 * batch * (t if batch > 1 else 1)
    return KernelCost(
        "kv_write", "elementwise", 0.0, "fp32", {"activations": n * act_bytes, "kv_cache": n * kv_bytes}, pieces=pieces
    )
