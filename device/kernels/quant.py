"""Weights stored in low precision, and matrix products that read them as stored.

Formats (`FORMATS`; the arrays each keeps, and so its bytes, in `array_shapes`):
- `fp32`; `fp16`, `bf16`: 16-bit codes, decoded through a 65,536-entry table;
- `fp8_e4m3`, `fp8_e5m2`: 8-bit codes and one fp32 scale per output channel (weight only);
- `int8`: symmetric, one fp32 scale per output channel (weight only);
- `int4`, `q4_1`: blocks of 32 weights along the input dimension with an fp16 scale d and
  offset m, w = q * d + m, q in 0..15 (llama.cpp's Q4_1; `int4` is the same layout made by
  quantizing at load);
- `q4_0`: blocks of 32, w = (q - 8) * d; `q8_0`: blocks of 32, w = q * d, q int8.
Block formats are kept as structure-of-arrays (`qs`, `d`, `m`): the same bytes as the file's
blocks, laid out so each block's 16 bytes of nibbles are contiguous for SIMD. Every kernel
accumulates in fp32 and computes the dot product of x with the dequantized weights.

Variants:
1. `_linear_half`: fp16 or bf16 bit patterns widened exactly in the row loop
   (`vector_ir.fp16_row`, `bf16_row`).
2. `_linear_int8`, `_linear_fp8`: int8 or fp8 codes (widened exactly), times a channel scale.
3. `_linear_q4`: nibble blocks; x is first split per block into its first and second 16
   values, the low and high nibbles' partners. Each row's loop is LLVM vector IR
   (`vector_ir.q4_1_row`, `q4_0_row`): numba's own vectorizer kept its accumulators in
   memory. Takes tuples of weights, so a layer's q, k, v (or gate, up), which read the
   same x, are one launch (`linear_group`). Each thread takes one contiguous range of
   rows; the row loops convert the fp16 scales and offsets where they read them (a
   separate conversion pass into scratch cost a fifth of a decode step's products).
4. `_linear_q8_0`: int8 blocks of 32 with an fp16 scale (`vector_ir.q8_0_row`).
5. With int8 activations (`act="int8"`), block weights go to `q8_act` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import get_num_threads, njit, prange

from tilesim.device.kernels import addresses, jit_cache, q8_act
from tilesim.device.kernels import vector_ir as ir
from tilesim.device.kernels.addresses import row_starts
from tilesim.errors import ConfigError

jit_cache.depends_on(__file__, ir, addresses)

FORMATS = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4", "q4_0", "q4_1", "q8_0")
BLOCK = 32
_BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "int4": 20, "q8_0": 34}  # bytes of one block of 32 weights in GGUF
FP8 = ("fp8_e4m3", "fp8_e5m2")

LUT_FP16 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
LUT_BF16 = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)  # a bf16 is the top half of an fp32
LUT_INT8 = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32)
_LUT_FP8: dict[str, np.ndarray] = {}


def ml_type(fmt: str) -> type:
    """The ml_dtypes scalar type of a 16- or 8-bit float format; imported on first use (ml_dtypes
    takes about 0.6 s to import, which runs that use neither bf16 nor fp8 should not pay)."""
    import ml_dtypes

    return {"bf16": ml_dtypes.bfloat16, "fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2}[fmt]


def lut_fp8(fmt: str) -> np.ndarray:
    """Every fp8 code of `fmt` as fp32."""
    if fmt not in _LUT_FP8:
        _LUT_FP8[fmt] = np.arange(256, dtype=np.uint8).view(ml_type(fmt)).astype(np.float32)
    return _LUT_FP8[fmt]


@dataclass
class Packed:
    """A weight matrix (out, in) = `shape` in format `fmt`: its arrays by name."""

    fmt: str
    shape: tuple[int, int]
    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def array_shapes(fmt: str, shape: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The arrays a weight of this format and shape is stored as: name -> (shape, dtype)."""
    n, k = shape
    if fmt == "fp32":
        return {"w": ((n, k), np.dtype(np.float32))}
    if fmt in ("fp16", "bf16"):
        return {"w": ((n, k), np.dtype(np.uint16))}
    if fmt in ("fp8_e4m3", "fp8_e5m2", "int8"):
        return {"w": ((n, k), np.dtype(np.uint8 if fmt != "int8" else np.int8)), "scale": ((n,), np.dtype(np.float32))}
    blocks = -(-k // BLOCK)
    if fmt == "q8_0":
        return {"qs": ((n, blocks * BLOCK), np.dtype(np.int8)), "d": ((n, blocks), np.dtype(np.uint16))}
    out = {"qs": ((n, blocks * 16), np.dtype(np.uint8)), "d": ((n, blocks), np.dtype(np.uint16))}
    if fmt in ("q4_1", "int4"):
        out["m"] = ((n, blocks), np.dtype(np.uint16))
    return out


# -- packing at load ---------------------------------------------------------------------


def pack(w: np.ndarray, fmt: str) -> Packed:
    """Quantize an fp32 matrix (out, in) to `fmt` (per shard, at load)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = w.shape
    if fmt == "fp32":
        return Packed(fmt, (n, k), {"w": w})
    if fmt == "fp16":
        return Packed(fmt, (n, k), {"w": w.astype(np.float16).view(np.uint16)})
    if fmt == "bf16":
        return Packed(fmt, (n, k), {"w": w.astype(ml_type("bf16")).view(np.uint16)})
    if fmt in FP8:
        import ml_dtypes

        top = float(ml_dtypes.finfo(ml_type(fmt)).max)
        scale = _channel_scale(w, top)
        codes = (w / scale[:, None]).astype(ml_type(fmt)).view(np.uint8)
        return Packed(fmt, (n, k), {"w": codes, "scale": scale})
    if fmt == "int8":
        scale = _channel_scale(w, 127.0)
        q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
        return Packed(fmt, (n, k), {"w": q, "scale": scale})
    if fmt in ("int4", "q4_1", "q4_0", "q8_0"):
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        qtype = {"int4": "Q4_1", "q4_1": "Q4_1", "q4_0": "Q4_0", "q8_0": "Q8_0"}[fmt]
        padded = np.zeros((n, -(-k // BLOCK) * BLOCK), np.float32)
        padded[:, :k] = w
        blocks = quantize(padded, getattr(GGMLQuantizationType, qtype))
        return from_blocks(blocks, fmt, (n, k))
    raise ConfigError(f"unknown weight format {fmt!r}; use one of {', '.join(FORMATS)}")


def _channel_scale(w: np.ndarray, top: float) -> np.ndarray:
    absmax = np.abs(w).max(axis=1).astype(np.float32)
    return np.where(absmax > 0, absmax / np.float32(top), np.float32(1.0)).astype(np.float32)


def from_blocks(blocks: np.ndarray, fmt: str, shape: tuple[int, int]) -> Packed:
    """Repack llama.cpp blocks (rows of bytes, as stored in GGUF) into structure-of-arrays."""
    n, k = shape
    per = _BLOCK_BYTES[fmt]
    b = np.ascontiguousarray(blocks).reshape(n, -1, per)
    d = np.ascontiguousarray(b[:, :, 0:2]).view(np.uint16)[:, :, 0]
    if fmt == "q8_0":
        return Packed(
            fmt, (n, k), {"qs": np.ascontiguousarray(b[:, :, 2:]).view(np.int8).reshape(n, -1), "d": d.copy()}
        )
    if fmt == "q4_0":
        return Packed(fmt, (n, k), {"qs": np.ascontiguousarray(b[:, :, 2:]).reshape(n, -1), "d": d.copy()})
    m = np.ascontiguousarray(b[:, :, 2:4]).view(np.uint16)[:, :, 0]
    return Packed(fmt, (n, k), {"qs": np.ascontiguousarray(b[:, :, 4:]).reshape(n, -1), "d": d.copy(), "m": m.copy()})


def padded(p: Packed, shape: tuple[int, int]) -> Packed:
    """`p` grown to `shape` with zero rows and whole zero blocks, which decode to 0.0 in every
    format (a zero scale): padded heads stay in their checkpoint's blocks. `shape[1]` and
    `p.shape[1]` must be whole blocks for a block format."""
    arrays = {}
    for key, (full, dtype) in array_shapes(p.fmt, shape).items():
        grown = np.zeros(full, dtype)
        source = p.arrays[key]
        grown[tuple(slice(0, n) for n in source.shape)] = source
        arrays[key] = grown
    return Packed(p.fmt, tuple(shape), arrays)


def zeros(fmt: str, shape: tuple[int, int]) -> Packed:
    """A weight of `shape` whose every value is 0.0, stored as `fmt`."""
    return Packed(fmt, tuple(shape), {k: np.zeros(s, d) for k, (s, d) in array_shapes(fmt, shape).items()})


def unpack(p: Packed, rows: np.ndarray | None = None) -> np.ndarray:
    """The fp32 values of a packed weight (or of some of its rows): the kernels' reference."""
    a = {name: (arr if rows is None else arr[rows]) for name, arr in p.arrays.items()}
    k = p.shape[1]
    if p.fmt == "fp32":
        return a["w"].astype(np.float32, copy=True)
    if p.fmt in ("fp16", "bf16"):
        return (LUT_FP16 if p.fmt == "fp16" else LUT_BF16)[a["w"]]
    if p.fmt in FP8:
        return lut_fp8(p.fmt)[a["w"]] * a["scale"][:, None]
    if p.fmt == "int8":
        return a["w"].astype(np.float32) * a["scale"][:, None]
    d = LUT_FP16[a["d"]][:, :, None]
    if p.fmt == "q8_0":
        q = a["qs"].reshape(d.shape[0], d.shape[1], BLOCK).astype(np.float32)
        return (q * d).reshape(d.shape[0], -1)[:, :k]
    qs = a["qs"].reshape(d.shape[0], d.shape[1], 16)
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.float32)  # element j, then j + 16
    m = LUT_FP16[a["m"]][:, :, None] if p.fmt in ("q4_1", "int4") else -8.0 * d
    return (q * d + m).reshape(d.shape[0], -1)[:, :k]


# -- kernels -----------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _linear_half(x, w, bf16, bias, out):  # w (N, K) fp16 or bf16 bit patterns
    has_bias = bias.shape[0] > 0
    whole = x.shape[0] - x.shape[0] % ir.DENSE_ROWS
    for n in prange(w.shape[0]):
        b = bias[n] if has_bias else np.float32(0.0)
        for m0 in range(0, whole, ir.DENSE_ROWS):  # each weight row widened once for DENSE_ROWS rows of x
            sums = ir.bf16_rows(x, m0, w[n]) if bf16 else ir.fp16_rows(x, m0, w[n])
            for i in range(ir.DENSE_ROWS):
                out[m0 + i, n] = sums[i] + b
        for m in range(whole, x.shape[0]):
            acc = ir.bf16_row(x[m], w[n]) if bf16 else ir.fp16_row(x[m], w[n])
            out[m, n] = acc + b


@njit(cache=True, parallel=True)
def _linear_int8(x, w, scale, bias, out):  # w (N, K) int8, one scale per output channel
    has_bias = bias.shape[0] > 0
    whole = x.shape[0] - x.shape[0] % ir.DENSE_ROWS
    for n in prange(w.shape[0]):
        b = bias[n] if has_bias else np.float32(0.0)
        for m0 in range(0, whole, ir.DENSE_ROWS):  # as in _linear_half
            sums = ir.int8_rows(x, m0, w[n])
            for i in range(ir.DENSE_ROWS):
                out[m0 + i, n] = sums[i] * scale[n] + b
        for m in range(whole, x.shape[0]):
            out[m, n] = ir.int8_row(x[m], w[n]) * scale[n] + b


@njit(cache=True, parallel=True)
def _linear_fp8(x, w, e5m2, scale, bias, out):  # w (N, K) fp8 codes, one scale per output channel
    has_bias = bias.shape[0] > 0
    whole = x.shape[0] - x.shape[0] % ir.DENSE_ROWS
    for n in prange(w.shape[0]):
        b = bias[n] if has_bias else np.float32(0.0)
        for m0 in range(0, whole, ir.DENSE_ROWS):  # as in _linear_half
            sums = ir.fp8_e5m2_rows(x, m0, w[n]) if e5m2 else ir.fp8_e4m3_rows(x, m0, w[n])
            for i in range(ir.DENSE_ROWS):
                out[m0 + i, n] = sums[i] * scale[n] + b
        for m in range(whole, x.shape[0]):
            acc = ir.fp8_e5m2_row(x[m], w[n]) if e5m2 else ir.fp8_e4m3_row(x[m], w[n])
            out[m, n] = acc * scale[n] + b


@njit(cache=True)
def _split_halves(x, blocks):
    """Each block's first and second 16 inputs (zero past K): the low and high nibbles' partners."""
    x_lo = np.zeros((x.shape[0], blocks * 16), np.float32)
    x_hi = np.zeros((x.shape[0], blocks * 16), np.float32)
    _split_into(x, x_lo, x_hi)
    return x_lo, x_hi


@njit(cache=True)
def _split_into(x, x_lo, x_hi):
    """`_split_halves` into zeroed arrays of the caller's."""
    for m in range(x.shape[0]):
        for k in range(x.shape[1]):
            b, j = k // 32, k % 32
            if j < 16:
                x_lo[m, b * 16 + j] = x[m, k]
            else:
                x_hi[m, b * 16 + j - 16] = x[m, k]


@njit(cache=True)
def _padded(x, blocks):
    """x with zeros up to whole blocks of 32, contiguous."""
    out = np.zeros((x.shape[0], blocks * 32), np.float32)
    out[:, : x.shape[1]] = x
    return out


_DECODE_ONCE = 4  # x rows (a prefill) from which a weight row is decoded once, then dotted with each
# weight rows decoded together, then dotted with each x row: x is read once a tile, not once a
# weight row (a 3000-token prompt's x is 7 MB, past the caches; its q4 products were 39 s of 77)
_TILE = 32


@njit(cache=True)
def _q4_rows(x_lo, x_hi, qs, d16, m16, symmetric, bias, out, first, last, wl, wh):
    """Rows first..last of one nibble-block weight, with the calling thread's scratch."""
    m_rows = x_lo.shape[0]
    once = m_rows >= _DECODE_ONCE
    has_bias = bias.shape[0] > 0  # (0,) when there is none
    if not once and ir.FOUR_ROWS:  # ir.ROWS rows at a time, then one by one
        n = first
        while n + ir.ROWS <= last:
            for m in range(m_rows):
                if symmetric:
                    sums = ir.q4_0_rows(x_lo[m], x_hi[m], qs, d16, n)
                else:
                    sums = ir.q4_1_rows(x_lo[m], x_hi[m], qs, d16, m16, n)
                for r in range(ir.ROWS):
                    out[m, n + r] = sums[r] + (bias[n + r] if has_bias else np.float32(0.0))
            n += ir.ROWS
        first = n
    if not once:
        for n in range(first, last):
            b = bias[n] if has_bias else np.float32(0.0)
            for m in range(m_rows):
                if symmetric:
                    out[m, n] = ir.q4_0_row(x_lo[m], x_hi[m], qs[n], d16[n]) + b
                else:
                    out[m, n] = ir.q4_1_row(x_lo[m], x_hi[m], qs[n], d16[n], m16[n]) + b
        return
    for n0 in range(first, last, _TILE):
        rows = min(_TILE, last - n0)
        for r in range(rows):
            if symmetric:
                ir.q4_0_decode(qs[n0 + r], wl[r], wh[r])
            else:
                ir.q4_1_decode(qs[n0 + r], d16[n0 + r], m16[n0 + r], wl[r], wh[r])
        whole = m_rows - m_rows % ir.X_ROWS
        for m0 in range(0, whole, ir.X_ROWS):  # X_ROWS rows of x a call, each its own sums
            for r in range(rows):
                n = n0 + r
                b = bias[n] if has_bias else np.float32(0.0)
                if symmetric:
                    sums = ir.q4_0_decoded_rows(x_lo, x_hi, m0, wl[r], wh[r], d16[n])
                else:
                    sums = ir.q4_1_decoded_rows(x_lo, x_hi, m0, wl[r], wh[r])
                for i in range(ir.X_ROWS):
                    out[m0 + i, n] = sums[i] + b
        for m in range(whole, m_rows):
            for r in range(rows):
                n = n0 + r
                b = bias[n] if has_bias else np.float32(0.0)
                if symmetric:
                    out[m, n] = ir.q4_0_decoded(x_lo[m], x_hi[m], wl[r], wh[r], d16[n]) + b
                else:
                    out[m, n] = ir.q4_1_decoded(x_lo[m], x_hi[m], wl[r], wh[r]) + b


@njit(cache=True, parallel=True)
def _linear_q4(x, qss, d16s, m16s, symmetric, biases, outs, threads):
    """Several nibble-block weights (tuples, same K) applied to the same x: one launch for
    a layer's q, k and v, or its gate and up. Their rows, end to end, are split evenly into
    one contiguous range per thread."""
    blocks = d16s[0].shape[1]
    x_lo, x_hi = _split_halves(x, blocks)
    starts = row_starts(d16s)
    for t in prange(threads):
        once = x.shape[0] >= _DECODE_ONCE
        wl = np.empty((_TILE if once else 0, blocks * 16), np.float32)
        wh = np.empty((_TILE if once else 0, blocks * 16), np.float32)
        lo, hi = starts[-1] * t // threads, starts[-1] * (t + 1) // threads
        for w in range(len(qss)):
            first, last = max(lo, starts[w]) - starts[w], min(hi, starts[w + 1]) - starts[w]
            if first < last:
                _q4_rows(x_lo, x_hi, qss[w], d16s[w], m16s[w], symmetric, biases[w], outs[w], first, last, wl, wh)


@njit(cache=True)
def _q8_0_rows(xp, qs, d16, bias, out, first, last, codes):
    """Rows first..last of a q8_0 weight for x padded to whole blocks, with the calling thread's scratch."""
    once = xp.shape[0] >= _DECODE_ONCE
    has_bias = bias.shape[0] > 0
    if not once:
        for n in range(first, last):
            b = bias[n] if has_bias else np.float32(0.0)
            for m in range(xp.shape[0]):
                out[m, n] = ir.q8_0_row(xp[m], qs[n], d16[n]) + b
        return
    for n0 in range(first, last, _TILE):
        rows = min(_TILE, last - n0)
        for r in range(rows):
            ir.q8_0_decode(qs[n0 + r], codes[r])
        whole = xp.shape[0] - xp.shape[0] % ir.X_ROWS
        for m0 in range(0, whole, ir.X_ROWS):  # as in _q4_rows
            for r in range(rows):
                n = n0 + r
                sums = ir.q8_0_decoded_rows(xp, m0, codes[r], d16[n])
                for i in range(ir.X_ROWS):
                    out[m0 + i, n] = sums[i] + (bias[n] if has_bias else np.float32(0.0))
        for m in range(whole, xp.shape[0]):
            for r in range(rows):
                n = n0 + r
                out[m, n] = ir.q8_0_decoded(xp[m], codes[r], d16[n]) + (bias[n] if has_bias else np.float32(0.0))


@njit(cache=True, parallel=True)
def _linear_q8_0(x, qs, d16, bias, out, threads):
    n_rows, blocks = d16.shape
    xp = _padded(x, blocks)
    once = x.shape[0] >= _DECODE_ONCE
    for t in prange(threads):
        codes = np.empty((_TILE if once else 0, blocks * 32), np.float32)
        _q8_0_rows(xp, qs, d16, bias, out, n_rows * t // threads, n_rows * (t + 1) // threads, codes)


_EMPTY = np.zeros(0, dtype=np.float32)
_NO_M = np.zeros((1, 1), dtype=np.uint16)


Products = Callable[[np.ndarray, tuple[np.ndarray, ...]], None]
_NIBBLES = ("q4_0", "q4_1", "int4")


def bind(ps: list[Packed], biases: list[np.ndarray | None], act: str = "fp32") -> Products:
    """`run(x, outs)`: `outs[i] = x @ dequantized(ps[i]).T + biases[i]` for weights that read
    the same x, each read as stored. Arrays are looked up once, here, so a decode step pays
    only the kernel call; nibble-block weights of one format share one launch. `outs` must
    be C-contiguous (`linear_group` checks; the executor's planned views are). The block
    kernels split their rows into as many ranges as numba had threads here (reading the
    count takes a lock, a microsecond per call); a later `numba.set_num_threads` leaves the
    results as they are and only the split uneven.

    `act="int8"`: block weights (q8_act.FORMATS) meet x quantized to int8 blocks, in integer
    dot products (`q8_act`); other weights still take x in fp32."""
    if act not in ("fp32", "int8"):
        raise ConfigError(f"products take fp32 or int8 activations, not {act!r}")
    if act == "int8" and all(p.fmt in q8_act.FORMATS for p in ps):
        qs, d, m, b = _block_arrays(ps, biases)
        kinds, codes = tuple(q8_act.KIND[p.fmt] for p in ps), tuple(q.view(np.uint8) for q in qs)  # q8_0's as bytes
        threads = get_num_threads()
        return lambda x, outs: q8_act.linear(x, kinds, codes, d, m, b, outs, threads)
    fmt = ps[0].fmt
    if fmt in _NIBBLES and all(p.fmt == fmt for p in ps) and act == "fp32":
        return _bind_q4(ps, biases)
    if len(ps) > 1:
        return _each([bind([p], [b], act) for p, b in zip(ps, biases, strict=True)])
    call = _bind_one(ps[0], biases[0])
    return lambda x, outs: call(x, outs[0])


def _each(calls: list[Products]) -> Products:
    def run(x: np.ndarray, outs: tuple[np.ndarray, ...]) -> None:
        for one, out in zip(calls, outs, strict=True):
            one(x, (out,))

    return run


def _block_arrays(ps: list[Packed], biases: list[np.ndarray | None]) -> tuple[tuple, tuple, tuple, tuple]:
    """Block weights' codes, scales, offsets (a stand-in where there are none) and biases
    (empty where there are none) as the tuples the group kernels take."""
    qs = tuple(p.arrays["qs"] for p in ps)
    d = tuple(p.arrays["d"] for p in ps)
    m = tuple(p.arrays.get("m", _NO_M) for p in ps)
    b = tuple(_EMPTY if bias is None else bias for bias in biases)
    return qs, d, m, b


def _bind_q4(ps: list[Packed], biases: list[np.ndarray | None]) -> Products:
    qs, d, m, b = _block_arrays(ps, biases)
    symmetric = ps[0].fmt == "q4_0"
    threads = get_num_threads()
    return lambda x, outs: _linear_q4(x, qs, d, m, symmetric, b, outs, threads)


def _bind_one(p: Packed, bias: np.ndarray | None) -> Callable[[np.ndarray, np.ndarray], None]:
    b = _EMPTY if bias is None else bias
    a = p.arrays
    if p.fmt == "fp32":
        from tilesim.device.kernels.matmul import _linear_f32

        w = a["w"]
        return lambda x, out: _linear_f32(x, w, b, out)
    if p.fmt in ("fp16", "bf16"):
        w, bf16 = a["w"], p.fmt == "bf16"
        return lambda x, out: _linear_half(x, w, bf16, b, out)
    if p.fmt == "int8":
        w, scale = a["w"], a["scale"]
        return lambda x, out: _linear_int8(x, w, scale, b, out)
    if p.fmt in FP8:
        w, scale, e5m2 = a["w"], a["scale"], p.fmt == "fp8_e5m2"
        return lambda x, out: _linear_fp8(x, w, e5m2, scale, b, out)
    if p.fmt == "q8_0":
        qs, d = a["qs"], a["d"]
        threads = get_num_threads()
        return lambda x, out: _linear_q8_0(x, qs, d, b, out, threads)
    group = _bind_q4([p], [bias])
    return lambda x, out: group(x, (out,))


def linear(x: np.ndarray, p: Packed, bias: np.ndarray | None, out: np.ndarray, act: str = "fp32") -> np.ndarray:
    """`out = x @ dequantized(p).T + bias`, reading `p` as it is stored (`act`: see `bind`)."""
    target = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)  # the row loops need C order
    bind([p], [bias], act)(np.ascontiguousarray(x), (target,))
    if target is not out:
        out[...] = target
    return out


def linear_group(
    x: np.ndarray, ps: list[Packed], biases: list[np.ndarray | None], outs: list[np.ndarray], act: str = "fp32"
) -> None:
    """`linear` for several weights that read the same x (a layer's q, k, v): block weights
    of one format (any block format, with int8 activations) go through one kernel launch;
    anything else, one call each."""
    if all(o.flags.c_contiguous for o in outs) and x.flags.c_contiguous:
        bind(ps, biases, act)(x, tuple(outs))
        return
    for p, b, out in zip(ps, biases, outs, strict=True):
        linear(x, p, b, out, act)
