"""Block-quantized matrix products with int8 activations (`--act-dtype int8`).

Each product quantizes its input x per block of 32 along K, the way llama.cpp does for its
Q4/Q8 dot products: codes `qx = round(x / dx)` in -127..127 (ties to even) with one fp32
scale `dx = max|x| / 127` per block. The weight blocks (q4_0, q4_1 / int4, q8_0, as stored)
then meet x in exact integer dot products, one scale multiplication per block and an fp32
sum over blocks (`int_dot_ir`). Against fp32 activations this trades x's rounding (at most
dx / 2 per value, about 0.4% of the block's largest) for integer arithmetic, about twice as
fast per weight on this project's machine (AVX2 byte dot products); logits no longer match `transformers` exactly
(docs/precision.md gives the measured error). Everything else in the model stays fp32.

`linear` runs weights that read the same x (a layer's q, k, v or gate, up) in one launch,
each thread one contiguous range of their rows; `quant.bind(..., act="int8")` calls it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tilesim.device.kernels import addresses, jit_cache, vector_ir
from tilesim.device.kernels import int_dot_ir as ir
from tilesim.device.kernels.addresses import row_starts

jit_cache.depends_on(__file__, ir, vector_ir, addresses)

FORMATS = ("q4_0", "q4_1", "int4", "q8_0")
BLOCK = 32
KIND = {"q4_1": 0, "int4": 0, "q4_0": 1, "q8_0": 2}  # `linear`'s code for each format
_CHUNK = 64  # weight rows (18 KiB of q4 at K = 576) run through each x row before the next


@njit(cache=True)
def quantize_rows(x, blocks, qx, dx, qsum, sx):
    """x (M, K) fp32 into int8 blocks of 32: codes qx (M, blocks * 32), scales dx, code sums
    qsum and sx = dx * qsum (M, blocks). Values past K are zero codes. A block holding a NaN or an
    infinity gets a NaN scale, so the product is NaN as fp32 arithmetic would make it. Whole
    blocks go through vector IR (`int_dot_ir.quantize_blocks`), a partial last block through
    this loop; both round the same way (x * (1 / scale), ties to even)."""
    k_dim = x.shape[1]
    whole = min(blocks, k_dim // BLOCK)
    for r in range(x.shape[0]):
        ir.quantize_blocks(x[r], qx[r], dx[r], qsum[r], sx[r])
        for b in range(whole, blocks):
            lo, hi = b * BLOCK, min(k_dim, (b + 1) * BLOCK)
            amax = np.float32(0.0)
            finite = True
            for k in range(lo, hi):
                v = x[r, k]
                if not np.isfinite(v):
                    finite = False
                amax = max(amax, abs(v))
            scale = amax / np.float32(127.0)
            inverse = np.float32(1.0) / scale if scale > 0 and finite else np.float32(0.0)
            total = 0
            for j in range(BLOCK):
                code = 0
                if finite and lo + j < hi:
                    code = min(127, max(-127, int(np.rint(x[r, lo + j] * inverse))))
                qx[r, lo + j] = code
                total += code
            dx[r, b] = scale if finite else np.float32(np.nan)
            qsum[r, b] = total
            sx[r, b] = dx[r, b] * np.float32(total)


@njit(cache=True)
def _rows(qx, dx, qsum, sx, kind, qs, d16, m16, bias, out, first, last):
    """Rows first..last of one weight (kind 0: q4_1, 1: q4_0, 2: q8_0), _CHUNK rows at a
    time for each x row (x's row views made once per chunk, the chunk's weights in cache)."""
    has_bias = bias.shape[0] > 0
    for start in range(first, last, _CHUNK):
        stop = min(last, start + _CHUNK)
        for r in range(qx.shape[0]):
            xr, scale, sums, shifts, o = qx[r], dx[r], qsum[r], sx[r], out[r]
            if kind == 0:
                for n in range(start, stop):
                    o[n] = ir.q4_1_row(xr, scale, shifts, qs[n], d16[n], m16[n])
            elif kind == 1:
                for n in range(start, stop):
                    o[n] = ir.q4_0_row(xr, scale, sums, qs[n], d16[n])
            else:
                for n in range(start, stop):
                    o[n] = ir.q8_0_row(xr, scale, qs[n], d16[n])
            if has_bias:
                o[start:stop] += bias[start:stop]


@njit(cache=True, parallel=True)
def linear(x, kinds, qss, d16s, m16s, biases, outs, threads):
    """Block weights (tuples, same K: codes as uint8, fp16 scales and offsets, biases, `KIND`
    codes) applied to the same x, quantized once to int8 blocks."""
    blocks = d16s[0].shape[1]
    qx = np.empty((x.shape[0], blocks * BLOCK), np.int8)
    dx = np.empty((x.shape[0], blocks), np.float32)
    qsum = np.empty((x.shape[0], blocks), np.int32)
    sx = np.empty((x.shape[0], blocks), np.float32)
    quantize_rows(x, blocks, qx, dx, qsum, sx)
    starts = row_starts(d16s)
    for t in prange(threads):
        lo, hi = starts[-1] * t // threads, starts[-1] * (t + 1) // threads
        for w in range(len(qss)):
            first, last = max(lo, starts[w]) - starts[w], min(hi, starts[w + 1]) - starts[w]
            if first < last:
                _rows(qx, dx, qsum, sx, kinds[w], qss[w], d16s[w], m16s[w], biases[w], outs[w], first, last)
