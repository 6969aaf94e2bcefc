"""One op on every emulated core in one kernel call.

Each core's operands live in its own memory, so an op of a step used to be one kernel call
per core; at TP 9 the calls' fixed costs (Python dispatch, argument unboxing, the thread
pool's launch, each kernel's set-up) outweighed the work, which is the same at every
degree. These kernels take every core's arrays as an address table (`addresses.Table`)
and spread all cores' rows over the host's threads in one launch. Each element is computed
by the same row function as the per-core kernel (`quant._q4_rows`, `quant._q8_0_rows`,
`matmul._f32_rows`, the norms), so the bits are the same (tests/device/test_cores.py).

Variants:
1. `linear`: every core's products of a step (a layer's q, k, v on each core is one
   `group`), for fp32, q4_0/q4_1/int4 and q8_0 weights with fp32 activations; `bind_linear`
   returns None for anything else, and the caller keeps the per-core kernels. A weight
   several cores hold (replicated key/value heads) is computed once and copied to the
   cores whose inputs have the same bits (`replicas.py`).
2. `add_norm`: every core's residual add and RMS or layer norm (a core whose inputs and
   weights are another's copies that core's results).
3. `silu_mul`: every core's SwiGLU.
4. `attention`: every core's KV-cache write and attention over an fp32 cache
   (`attention.attend_one` per query row of every core, on one thread for a small step).
5. `rope`: every core's query and key heads rotated.
6. `norm`, `take_rows`, `embed`: every core's final norm, choice of the rows that get
   logits, and fp32 embedding lookup (small, but at TP 32 a call per core cost more than
   the products of a tiny model).
7. `head_norm`: every core's RMS norm over each query or key head (Qwen3's q_norm, k_norm).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import get_num_threads, njit, prange

from tilesim.device.kernels import (
    activations,
    addresses,
    attention,
    elementwise,
    jit_cache,
    matmul,
    norms,
    quant,
    replicas,
    rotary,
)
from tilesim.device.kernels import vector_ir as ir
from tilesim.device.kernels.activations import _silu_mul
from tilesim.device.kernels.addresses import Table, at, contiguous
from tilesim.device.kernels.matmul import _f32_rows

jit_cache.depends_on(__file__, ir, addresses, attention, activations, elementwise, matmul, norms, quant, rotary)

_F32 = np.zeros(0, np.float32)
_U8 = np.zeros(0, np.uint8)
_U16 = np.zeros(0, np.uint16)
_I8 = np.zeros(0, np.int8)
_U32 = np.zeros(0, np.uint32)
_DECODE_ONCE = quant._DECODE_ONCE
_TILE = quant._TILE

# columns of a products table: one row per (core, weight)
# (a replica's entry adds _SRC: the entry of `t` it is copied from)
_CORE, _W, _D, _M, _BIAS, _NBIAS, _OUT, _OUT_ROWS, _N, _SRC = range(10)


def bind_linear(
    xs: Sequence[np.ndarray],
    weights: Sequence[Sequence[quant.Packed]],
    biases: Sequence[Sequence[np.ndarray | None]],
    outs: Sequence[Sequence[np.ndarray]],
) -> Callable[[int], None] | None:
    """`run(m)`: on every core c, `outs[c][i][:m] = xs[c][:m] @ weights[c][i].T + biases[c][i]`,
    in one call; the cores' input widths may differ (an uneven split). None when the weights
    are not all of one format this module runs (fp32, nibble blocks, q8_0), a weight's width
    is not its core's input width, or an array is not C-contiguous."""
    fmts = {p.fmt for ps in weights for p in ps}
    if len(fmts) != 1 or not contiguous(*xs, *(o for os in outs for o in os), *(b for bs in biases for b in bs)):
        return None
    fmt = fmts.pop()
    kind = "q4" if fmt in quant._NIBBLES else fmt
    if kind not in ("q4", "q8_0", "fp32"):
        return None
    if any(p.shape[1] != x.shape[1] for x, ps in zip(xs, weights, strict=True) for p in ps):
        return None
    if kind != "fp32" and any(p.arrays["d"].shape[1] != -(-p.shape[1] // 32) for ps in weights for p in ps):
        return None
    xt = Table()
    for x in xs:
        xt.add(x, x.shape[0], x.shape[1])
    rows, found = [], []
    for c, (ps, bs, os) in enumerate(zip(weights, biases, outs, strict=True)):
        for p, b, o in zip(ps, bs, os, strict=True):
            a = p.arrays
            w = a["w"] if kind == "fp32" else a["qs"]
            d = a.get("d", w)
            bias = _F32 if b is None else b
            if not contiguous(w, d):
                return None
            rows.append((c, w, d, a.get("m", d), bias, bias.shape[0], o, o.shape[0], o.shape[1]))
            found.append((xs[c].shape[1], (w, d, a.get("m", d), bias)))
    # an entry whose weight another core holds too is computed once (replicas.py)
    src = replicas.sources(found)
    table, copies, index = Table(), Table(), {}
    for i, (row, j) in enumerate(zip(rows, src, strict=True)):
        if j < 0:
            index[i] = len(table.rows)
            table.add(*row)
        else:
            copies.add(*row, index[j])
    x_addr, t = xt.array(), table.array()
    dups = copies.array() if copies.rows else np.zeros((0, _SRC + 1), np.int64)
    threads = get_num_threads()
    if kind == "fp32":
        return lambda m: _linear_f32(x_addr, t, dups, m, threads)
    blocks = max(-(-x.shape[1] // 32) for x in xs)  # the widest core's, for the shared scratch
    if kind == "q8_0":
        return lambda m: _linear_q8_0(x_addr, t, dups, m, blocks, threads)
    symmetric = fmt == "q4_0"
    return lambda m: _linear_q4(x_addr, t, dups, m, blocks, symmetric, threads)


@njit(cache=True)
def _starts(t):
    """Where each entry's output features start, all entries end to end."""
    starts = np.zeros(t.shape[0] + 1, np.int64)
    for e in range(t.shape[0]):
        starts[e + 1] = starts[e] + t[e, _N]
    return starts


@njit(cache=True)
def _range(starts, e, t, threads):
    """Thread t's share of entry e's output features (each thread one contiguous range of all)."""
    lo, hi = starts[-1] * t // threads, starts[-1] * (t + 1) // threads
    return max(lo, starts[e]) - starts[e], min(hi, starts[e + 1]) - starts[e]


@njit(cache=True)
def _out(t, e, m):
    return at(t[e, _OUT], _F32, (t[e, _OUT_ROWS], t[e, _N]))[:m]


@njit(cache=True)
def _bias(t, e):
    return at(t[e, _BIAS], _F32, (t[e, _NBIAS],))


@njit(cache=True)
def _x(x_addr, c, m):
    return at(x_addr[c, 0], _F32, (x_addr[c, 1], x_addr[c, 2]))[:m]


@njit(cache=True)
def _blocks(x_addr, c):
    return (x_addr[c, 2] + 31) // 32


# The inputs' preparation lives in functions compiled without `parallel`: in a parallel
# kernel every array expression (np.zeros, a slice assignment) becomes a parallel region of
# its own, a thread-pool launch of a few microseconds each, per core (at TP 9 the launches
# cost more than the products).
@njit(cache=True)
def _padded_all(x_addr, m, blocks):
    """Every core's first m input rows, zeros up to `blocks` whole blocks of 32."""
    xp = np.zeros((x_addr.shape[0], m, blocks * 32), np.float32)
    for c in range(x_addr.shape[0]):
        xp[c, :, : x_addr[c, 2]] = _x(x_addr, c, m)
    return xp


@njit(cache=True)
def _halves_all(x_addr, m, blocks):
    """Every core's first m input rows split as `quant._split_halves` does, zeros past its width."""
    x_lo = np.zeros((x_addr.shape[0], m, blocks * 16), np.float32)
    x_hi = np.zeros((x_addr.shape[0], m, blocks * 16), np.float32)
    for c in range(x_addr.shape[0]):
        quant._split_into(_x(x_addr, c, m), x_lo[c], x_hi[c])
    return x_lo, x_hi


@njit(cache=True)
def _same_inputs(x_addr, t, dups, m):
    """Whether each replica entry's input rows have its source's bits: compared before any
    product runs, as `_add_norm` does, so an output written over an input cannot matter."""
    same = np.zeros(dups.shape[0], np.bool_)
    for i in range(dups.shape[0]):
        c, src = dups[i, _CORE], t[dups[i, _SRC], _CORE]
        same[i] = _same_bits(x_addr[c, 0], x_addr[src, 0], m * x_addr[c, 2])
    return same


@njit(cache=True)
def _copy_replica(t, dups, i, m):
    _copy(dups[i, _OUT], t[dups[i, _SRC], _OUT], m * dups[i, _N])


@njit(cache=True)
def _f32_entry(x_addr, t, e, m, first, last):
    c = t[e, _CORE]
    w = at(t[e, _W], _F32, (t[e, _N], x_addr[c, 2]))
    _f32_rows(_x(x_addr, c, m), w, _bias(t, e), _out(t, e, m), first, last)


@njit(cache=True, parallel=True)
def _linear_f32(x_addr, t, dups, m, threads):  # pragma: no cover - compiled
    same = _same_inputs(x_addr, t, dups, m)
    starts = _starts(t)
    for th in prange(threads):
        for e in range(t.shape[0]):
            first, last = _range(starts, e, th, threads)
            if first < last:
                _f32_entry(x_addr, t, e, m, first, last)
    for i in range(dups.shape[0]):
        if same[i]:
            _copy_replica(t, dups, i, m)
        else:
            _f32_entry(x_addr, dups, i, m, 0, dups[i, _N])


@njit(cache=True)
def _q8_0_entry(x_addr, t, e, m, xp, first, last, codes):
    c, n = t[e, _CORE], t[e, _N]
    b = _blocks(x_addr, c)  # a narrower core's rows read the first b blocks of xp[c]
    qs, d16 = at(t[e, _W], _I8, (n, b * 32)), at(t[e, _D], _U16, (n, b))
    size = b * 32 if m >= _DECODE_ONCE else 0
    mine = codes[: _TILE * size].reshape((_TILE, size))  # the tile's rows, each b blocks wide
    quant._q8_0_rows(xp[c], qs, d16, _bias(t, e), _out(t, e, m), first, last, mine)


@njit(cache=True, parallel=True)
def _linear_q8_0(x_addr, t, dups, m, blocks, threads):  # pragma: no cover - compiled
    same = _same_inputs(x_addr, t, dups, m)
    xp = _padded_all(x_addr, m, blocks)
    starts = _starts(t)
    once = m >= _DECODE_ONCE
    for th in prange(threads):
        codes = np.empty(_TILE * blocks * 32 if once else 0, np.float32)
        for e in range(t.shape[0]):
            first, last = _range(starts, e, th, threads)
            if first < last:
                _q8_0_entry(x_addr, t, e, m, xp, first, last, codes)
    spare = np.empty(_TILE * blocks * 32 if once else 0, np.float32)  # the replicas run after the threads
    for i in range(dups.shape[0]):
        if same[i]:
            _copy_replica(t, dups, i, m)
        else:
            _q8_0_entry(x_addr, dups, i, m, xp, 0, dups[i, _N], spare)


@njit(cache=True)
def _q4_entry(x_addr, t, e, m, x_lo, x_hi, symmetric, first, last, wl, wh):
    c, n = t[e, _CORE], t[e, _N]
    b = _blocks(x_addr, c)  # a narrower core's rows read the first b blocks of x_lo[c]
    qs = at(t[e, _W], _U8, (n, b * 16))
    d16, m16 = at(t[e, _D], _U16, (n, b)), at(t[e, _M], _U16, (n, b))
    size = b * 16 if m >= _DECODE_ONCE else 0
    lo, hi = wl[: _TILE * size].reshape((_TILE, size)), wh[: _TILE * size].reshape((_TILE, size))
    quant._q4_rows(x_lo[c], x_hi[c], qs, d16, m16, symmetric, _bias(t, e), _out(t, e, m), first, last, lo, hi)


@njit(cache=True, parallel=True)
def _linear_q4(x_addr, t, dups, m, blocks, symmetric, threads):  # pragma: no cover - compiled
    same = _same_inputs(x_addr, t, dups, m)
    x_lo, x_hi = _halves_all(x_addr, m, blocks)
    starts = _starts(t)
    once = m >= _DECODE_ONCE
    for th in prange(threads):
        wl = np.empty(_TILE * blocks * 16 if once else 0, np.float32)
        wh = np.empty(_TILE * blocks * 16 if once else 0, np.float32)
        for e in range(t.shape[0]):
            first, last = _range(starts, e, th, threads)
            if first < last:
                _q4_entry(x_addr, t, e, m, x_lo, x_hi, symmetric, first, last, wl, wh)
    spare_lo = np.empty(_TILE * blocks * 16 if once else 0, np.float32)  # the replicas run after the threads
    spare_hi = np.empty(_TILE * blocks * 16 if once else 0, np.float32)
    for i in range(dups.shape[0]):
        if same[i]:
            _copy_replica(t, dups, i, m)
        else:
            _q4_entry(x_addr, dups, i, m, x_lo, x_hi, symmetric, 0, dups[i, _N], spare_lo, spare_hi)


# -- element-wise ops over every core ---------------------------------------------------


def bind_add_norm(
    a_s: Sequence[np.ndarray],
    b_s: Sequence[np.ndarray],
    sums: Sequence[np.ndarray],
    ws: Sequence[np.ndarray],
    bs: Sequence[np.ndarray | None],
    outs: Sequence[np.ndarray],
    eps: float,
) -> Callable[[int], None] | None:
    """`run(m)`: on every core, `sums = a + b` and `outs = norm(sums)` over the first m rows
    (layer norm where `bs` has biases, RMS norm otherwise); None if an array is not C-contiguous."""
    if not contiguous(*a_s, *b_s, *sums, *ws, *bs, *outs):
        return None
    layer = bs[0] is not None
    # the residual stream is the same on every core: a core whose norm weights another holds
    # too copies its results when its inputs have the same bits (replicas.py)
    src = replicas.sources(
        [(a.shape[1], (w, w if bias is None else bias)) for a, w, bias in zip(a_s, ws, bs, strict=True)]
    )
    table = Table()
    for a, b, s, w, bias, out, j in zip(a_s, b_s, sums, ws, bs, outs, src, strict=True):
        table.add(a, b, s, w, w if bias is None else bias, out, a.shape[0], a.shape[1], j)
    t, eps32 = table.array(), np.float32(eps)
    return lambda m: _add_norm(t, m, layer, eps32)


@njit(cache=True)
def _add_norm(t, m, layer, eps):  # pragma: no cover - compiled
    same = np.zeros(t.shape[0], np.bool_)  # compared first: the sum may be written over an input
    for c in range(t.shape[0]):
        src, n = t[c, 8], m * t[c, 7]
        same[c] = src >= 0 and _same_bits(t[c, 0], t[src, 0], n) and _same_bits(t[c, 1], t[src, 1], n)
    for c in range(t.shape[0]):
        rows, k, src = t[c, 6], t[c, 7], t[c, 8]
        if same[c]:
            _copy(t[c, 2], t[src, 2], m * k)
            _copy(t[c, 5], t[src, 5], m * k)
            continue
        a, b, s = at(t[c, 0], _F32, (rows, k))[:m], at(t[c, 1], _F32, (rows, k))[:m], at(t[c, 2], _F32, (rows, k))[:m]
        w, bias, out = at(t[c, 3], _F32, (k,)), at(t[c, 4], _F32, (k,)), at(t[c, 5], _F32, (rows, k))[:m]
        norms._add_norm(a, b, s, layer, w, bias, eps, out)


@njit(cache=True)
def _same_bits(first, second, n):
    """Whether the n fp32 values at two addresses have the same bits."""
    x, y = at(first, _U32, (n,)), at(second, _U32, (n,))
    diff = np.uint32(0)
    for i in range(n):  # no early exit: so LLVM vectorizes it (10x faster)
        diff |= x[i] ^ y[i]
    return diff == 0


@njit(cache=True)
def _copy(dst, src, n):
    """n fp32 values from one address to another (a flat loop: numba's 2-d slice assignment
    costs more than the copy)."""
    x, y = at(dst, _F32, (n,)), at(src, _F32, (n,))
    for i in range(n):
        x[i] = y[i]


def bind_silu_mul(
    gates: Sequence[np.ndarray], ups: Sequence[np.ndarray], outs: Sequence[np.ndarray]
) -> Callable[[int], None] | None:
    """`run(m)`: on every core, `outs[:m] = silu(gates[:m]) * ups[:m]`; None if an array is not C-contiguous."""
    if not contiguous(*gates, *ups, *outs):
        return None
    table = Table()
    for g, u, o in zip(gates, ups, outs, strict=True):
        table.add(g, u, o, g.shape[1])  # (an uneven split gives the cores different widths)
    t = table.array()
    return lambda m: _silu_mul_all(t, m)


@njit(cache=True)
def _silu_mul_all(t, m):  # pragma: no cover - compiled
    for c in range(t.shape[0]):
        n = m * t[c, 3]
        _silu_mul(at(t[c, 0], _F32, (n,)), at(t[c, 1], _F32, (n,)), at(t[c, 2], _F32, (n,)))


# -- attention over every core's fp32 KV cache ------------------------------------------


def bind_attention(
    qs: Sequence[np.ndarray],
    ks: Sequence[np.ndarray],
    vs: Sequence[np.ndarray],
    k_caches: Sequence[np.ndarray],
    v_caches: Sequence[np.ndarray],
    outs: Sequence[np.ndarray],
    slopes: Sequence[np.ndarray],
    head_dim: int,
    scale: float,
    window: int,
) -> Callable[[int, int, np.ndarray, np.ndarray], None] | None:
    """`run(batch, tokens, start, valid)`: on every core, the step's new keys and values
    (rows of `ks`, `vs`) written into its fp32 cache (slots, kv heads, positions, head_dim)
    from slot 0, then attention of its query rows into `outs`: what `KVCache.write` and
    `attend` do core by core. None if an array is not C-contiguous."""
    if not contiguous(*qs, *ks, *vs, *k_caches, *v_caches, *outs, *slopes):
        return None
    if len({q.shape[1] for q in qs}) > 1 or len({c.shape for c in (*k_caches, *v_caches)}) > 1:
        return None  # cores with different numbers of heads: core by core
    table = Table()
    for cells in zip(qs, ks, vs, k_caches, v_caches, outs, slopes, strict=True):
        table.add(*cells)
    t = table.array()
    hq, hkv = qs[0].shape[1] // head_dim, ks[0].shape[1] // head_dim
    cache_shape = k_caches[0].shape  # (slots, kv heads, positions, head_dim)
    scale32, window = np.float32(scale), int(window)

    def run(batch: int, tokens: int, start: np.ndarray, valid: np.ndarray) -> None:
        work = len(qs) * batch * tokens * hq * (int(start.max()) + tokens)
        fn = _attention_parallel if work > attention.PARALLEL_WORK else _attention_serial
        fn(t, batch, tokens, hq, hkv, head_dim, cache_shape, start, valid, scale32, window)

    return run


def _attention_impl(t, batch, tokens, hq, hkv, d, cache_shape, start, valid, scale, window):  # pragma: no cover
    n_cores = t.shape[0]
    for c in range(n_cores):
        k, v = at(t[c, 1], _F32, (batch, tokens, hkv, d)), at(t[c, 2], _F32, (batch, tokens, hkv, d))
        attention._kv_write(k, v, at(t[c, 3], _F32, cache_shape), at(t[c, 4], _F32, cache_shape), start, valid)
    per = batch * hq * tokens
    for idx in prange(n_cores * per):
        c = idx // per
        q, out = at(t[c, 0], _F32, (batch, tokens, hq, d)), at(t[c, 5], _F32, (batch, tokens, hq, d))
        k_cache, v_cache = at(t[c, 3], _F32, cache_shape), at(t[c, 4], _F32, cache_shape)
        slopes = at(t[c, 6], _F32, (hq,))
        attention.attend_one(q, k_cache, v_cache, start, valid, scale, window, slopes, out, idx % per)


_attention_serial = njit(cache=True)(_attention_impl)
_attention_parallel = njit(cache=True, parallel=True)(_attention_impl)


def bind_rope(
    qs: Sequence[np.ndarray],
    ks: Sequence[np.ndarray],
    head_dim: int,
    cos: np.ndarray,
    sin: np.ndarray,
    rot: int,
    style: str,
) -> Callable[[int, np.ndarray], None] | None:
    """`run(m, positions)`: every core's query and key rows (m, heads * head_dim) rotated in
    place at `positions`, as `rotary.rope` does; None if an array is not C-contiguous."""
    if not contiguous(*qs, *ks, cos, sin):
        return None
    table = Table()
    for x in (*qs, *ks):
        table.add(x, x.shape[1] // head_dim)
    t, neox = table.array(), style == "neox"
    return lambda m, positions: _rope_all(t, m, head_dim, positions, cos, sin, rot, neox)


@njit(cache=True)
def _rope_all(t, m, d, positions, cos, sin, rot, neox):  # pragma: no cover - compiled
    if rot == 0:
        return
    for i in range(t.shape[0]):
        x = at(t[i, 0], _F32, (m, t[i, 1], d))
        if neox:
            rotary._rope_neox(x, positions, cos, sin, rot)
        else:
            rotary._rope_gptj(x, positions, cos, sin, rot)


# -- the step's ends: embedding, final norm, rows for the logits ---------------------------


def bind_norm(
    xs: Sequence[np.ndarray], ws: Sequence[np.ndarray], bs: Sequence[np.ndarray | None], outs: Sequence[np.ndarray],
    eps: float,
) -> Callable[[int], None] | None:  # fmt: skip
    """`run(m)`: on every core, `outs[:m] = norm(xs[:m])` (layer norm where `bs` has biases,
    RMS norm otherwise); None if an array is not C-contiguous."""
    if not contiguous(*xs, *ws, *bs, *outs):
        return None
    table = Table()
    for x, w, bias, out in zip(xs, ws, bs, outs, strict=True):
        table.add(x, w, w if bias is None else bias, out, x.shape[0], x.shape[1])
    t, layer, eps32 = table.array(), bs[0] is not None, np.float32(eps)
    return lambda m: _norm_all(t, m, layer, eps32)


@njit(cache=True)
def _norm_all(t, m, layer, eps):  # pragma: no cover - compiled
    for c in range(t.shape[0]):
        rows, k = t[c, 4], t[c, 5]
        x, out = at(t[c, 0], _F32, (rows, k))[:m], at(t[c, 3], _F32, (rows, k))[:m]
        if layer:
            norms._layer_norm(x, at(t[c, 1], _F32, (k,)), at(t[c, 2], _F32, (k,)), eps, out)
        else:
            norms._rms_norm(x, at(t[c, 1], _F32, (k,)), eps, out)


def bind_head_norm(
    xs: Sequence[np.ndarray], ws: Sequence[np.ndarray], outs: Sequence[np.ndarray], eps: float
) -> Callable[[int], None] | None:
    """`run(m)`: on every core, each head of `xs[:m]` RMS-normed over its `w.shape[0]` features
    into `outs[:m]` (in place if they are the same), as `norms.head_rms_norm`; None if an array
    is not C-contiguous or a row is not whole heads (the per-core kernel says so)."""
    if not contiguous(*xs, *ws, *outs) or any(x.shape[1] % w.shape[0] for x, w in zip(xs, ws, strict=True)):
        return None
    table = Table()
    for x, w, out in zip(xs, ws, outs, strict=True):
        table.add(x, w, out, x.shape[0], x.shape[1], w.shape[0])
    t, eps32 = table.array(), np.float32(eps)
    return lambda m: _head_norm_all(t, m, eps32)


@njit(cache=True)
def _head_norm_all(t, m, eps):  # pragma: no cover - compiled
    for c in range(t.shape[0]):
        rows, k, d = t[c, 3], t[c, 4], t[c, 5]
        x, out = at(t[c, 0], _F32, (rows, k))[:m], at(t[c, 2], _F32, (rows, k))[:m]
        norms._head_rms_norm(x, at(t[c, 1], _F32, (d,)), eps, out, d)


def bind_take_rows(xs: Sequence[np.ndarray], outs: Sequence[np.ndarray]) -> Callable[[np.ndarray], None] | None:
    """`run(rows)`: on every core, `outs[i] = xs[rows[i]]` (rows in range); None if an array
    is not C-contiguous or the widths differ."""
    if not contiguous(*xs, *outs) or any(x.shape[1:] != o.shape[1:] for x, o in zip(xs, outs, strict=True)):
        return None
    table = Table()
    for x, out in zip(xs, outs, strict=True):
        table.add(x, out, x.shape[0], out.shape[0], int(np.prod(x.shape[1:])))
    t = table.array()
    return lambda rows: _take_all(t, rows)


@njit(cache=True)
def _take_all(t, rows):  # pragma: no cover - compiled
    for c in range(t.shape[0]):
        x, out = at(t[c, 0], _F32, (t[c, 2], t[c, 4])), at(t[c, 1], _F32, (t[c, 3], t[c, 4]))
        if rows.shape[0] > out.shape[0]:
            raise IndexError("more rows asked for than the output holds")
        for i in range(rows.shape[0]):
            if not 0 <= rows[i] < x.shape[0]:
                raise IndexError("a row outside the input")
            out[i] = x[rows[i]]


def bind_embed(
    tables: Sequence[np.ndarray], starts: Sequence[int], outs: Sequence[np.ndarray]
) -> Callable[[np.ndarray], None] | None:
    """`run(ids)`: on every core, `outs[i] = tables[ids[i] - start]` where the id falls in the
    core's slice of the vocabulary, zeros elsewhere (fp32 tables); None if an array is not
    C-contiguous."""
    if not contiguous(*tables, *outs):
        return None
    table = Table()
    for w, start, out in zip(tables, starts, outs, strict=True):
        table.add(w, out, w.shape[0], out.shape[0], out.shape[1], start)
    t = table.array()
    return lambda ids: _embed_all(t, ids)


@njit(cache=True)
def _embed_all(t, ids):  # pragma: no cover - compiled
    for c in range(t.shape[0]):
        w, out = at(t[c, 0], _F32, (t[c, 2], t[c, 4])), at(t[c, 1], _F32, (t[c, 3], t[c, 4]))
        if ids.shape[0] > out.shape[0]:
            raise IndexError("more ids than the output has rows")
        elementwise._embed(ids, w, t[c, 5], out[: ids.shape[0]])
