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
1. `_linear_lut16`: 16-bit codes through the table.
2. `_linear_scaled8`: 8-bit values (int8, or fp8 through a 256-entry table) times a channel scale.
3. `_linear_q4`: nibble blocks; x is first split per block into its first and second 16
   values, the low and high nibbles' partners; 16 lanes accumulate across blocks, so no
   sum is reduced per block. (Nibble arithmetic stays in uint8: numba would otherwise widen
   it to int64 and halve the SIMD width.)
4. `_linear_q8_0`: int8 blocks of 32 with an fp16 scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from numba import njit, prange

from tilesim.errors import ConfigError

FORMATS = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4", "q4_0", "q4_1", "q8_0")
BLOCK = 32
_BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "int4": 20, "q8_0": 34}  # bytes of one block of 32 weights in GGUF
_FP8 = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2}

LUT_FP16 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
LUT_BF16 = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
LUT_FP8 = {name: np.arange(256, dtype=np.uint8).view(t).astype(np.float32) for name, t in _FP8.items()}
LUT_INT8 = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32)


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
        return Packed(fmt, (n, k), {"w": w.astype(ml_dtypes.bfloat16).view(np.uint16)})
    if fmt in _FP8:
        top = float(ml_dtypes.finfo(_FP8[fmt]).max)
        scale = _channel_scale(w, top)
        codes = (w / scale[:, None]).astype(_FP8[fmt]).view(np.uint8)
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


def unpack(p: Packed, rows: np.ndarray | None = None) -> np.ndarray:
    """The fp32 values of a packed weight (or of some of its rows): the kernels' reference."""
    a = {name: (arr if rows is None else arr[rows]) for name, arr in p.arrays.items()}
    k = p.shape[1]
    if p.fmt == "fp32":
        return a["w"].astype(np.float32, copy=True)
    if p.fmt in ("fp16", "bf16"):
        return (LUT_FP16 if p.fmt == "fp16" else LUT_BF16)[a["w"]]
    if p.fmt in _FP8:
        return LUT_FP8[p.fmt][a["w"]] * a["scale"][:, None]
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


@njit(cache=True, fastmath=True, parallel=True)
def _linear_lut16(x, w, lut, bias, out):
    m_rows, k_dim = x.shape
    has_bias = bias.shape[0] > 0
    for n in prange(w.shape[0]):
        for m in range(m_rows):
            acc = np.float32(0.0)
            for k in range(k_dim):
                acc += x[m, k] * lut[w[n, k]]
            out[m, n] = acc + (bias[n] if has_bias else np.float32(0.0))


@njit(cache=True, fastmath=True, parallel=True)
def _linear_scaled8(x, w, lut, scale, bias, out):  # w uint8 codes through lut (fp8, or int8 viewed as uint8)
    m_rows, k_dim = x.shape
    has_bias = bias.shape[0] > 0
    for n in prange(w.shape[0]):
        for m in range(m_rows):
            acc = np.float32(0.0)
            for k in range(k_dim):
                acc += x[m, k] * lut[w[n, k]]
            out[m, n] = acc * scale[n] + (bias[n] if has_bias else np.float32(0.0))


@njit(cache=True)
def _split_halves(x, x_lo, x_hi):
    """Each block's first and second 16 inputs (zero past K): the low and high nibbles' partners."""
    m_rows, k_dim = x.shape
    x_lo[:, :] = 0.0
    x_hi[:, :] = 0.0
    for m in range(m_rows):
        for k in range(k_dim):
            b, j = k // 32, k % 32
            if j < 16:
                x_lo[m, b * 16 + j] = x[m, k]
            else:
                x_hi[m, b * 16 + j - 16] = x[m, k]


@njit(cache=True, fastmath=True, parallel=True)
def _linear_q4(x_lo, x_hi, qs, d16, m16, symmetric, lut, bias, out):
    m_rows = x_lo.shape[0]
    n_rows, blocks = d16.shape
    has_bias = bias.shape[0] > 0
    chunk = 32
    for c in prange((n_rows + chunk - 1) // chunk):
        lanes = np.empty(16, np.float32)
        for n in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            q = qs[n]
            for m in range(m_rows):
                xl = x_lo[m]
                xh = x_hi[m]
                for j in range(16):
                    lanes[j] = 0.0
                for b in range(blocks):
                    db = lut[d16[n, b]]
                    mb = np.float32(-8.0) * db if symmetric else lut[m16[n, b]]
                    for j in range(16):
                        v = q[b * 16 + j]
                        lo = np.float32(np.uint8(v & np.uint8(15))) * db + mb
                        hi = np.float32(np.uint8(v >> np.uint8(4))) * db + mb
                        lanes[j] += xl[b * 16 + j] * lo + xh[b * 16 + j] * hi
                acc = np.float32(0.0)
                for j in range(16):
                    acc += lanes[j]
                out[m, n] = acc + (bias[n] if has_bias else np.float32(0.0))


@njit(cache=True, fastmath=True, parallel=True)
def _linear_q8_0(x, qs, d16, lut, bias, out):  # x (M, blocks * 32), zero past K
    m_rows = x.shape[0]
    n_rows, blocks = d16.shape
    has_bias = bias.shape[0] > 0
    chunk = 32
    for c in prange((n_rows + chunk - 1) // chunk):
        lanes = np.empty(32, np.float32)
        for n in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            q = qs[n]
            for m in range(m_rows):
                xr = x[m]
                for j in range(32):
                    lanes[j] = 0.0
                for b in range(blocks):
                    db = lut[d16[n, b]]
                    for j in range(32):
                        lanes[j] += xr[b * 32 + j] * (np.float32(q[b * 32 + j]) * db)
                acc = np.float32(0.0)
                for j in range(32):
                    acc += lanes[j]
                out[m, n] = acc + (bias[n] if has_bias else np.float32(0.0))


_EMPTY = np.zeros(0, dtype=np.float32)
_NO_M = np.zeros((1, 1), dtype=np.uint16)


_SCRATCH: dict[tuple[str, int, int], np.ndarray] = {}


def _scratch(name: str, rows: int, cols: int, fill: np.ndarray | None = None) -> np.ndarray:
    """A reused host buffer (kernels' inputs rearranged; not device memory)."""
    buf = _SCRATCH.get((name, rows, cols))
    if buf is None:
        buf = _SCRATCH[(name, rows, cols)] = np.zeros((rows, cols), np.float32)
    if fill is not None:
        buf[:, : fill.shape[1]] = fill
        buf[:, fill.shape[1] :] = 0.0
    return buf


def linear(x: np.ndarray, p: Packed, bias: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """`out = x @ dequantized(p).T + bias`, reading `p` as it is stored."""
    b = _EMPTY if bias is None else bias
    a = p.arrays
    if p.fmt == "fp32":
        from tilesim.device.kernels.matmul import linear as linear_f32

        return linear_f32(x, a["w"], bias, out)
    if p.fmt in ("fp16", "bf16"):
        _linear_lut16(x, a["w"], LUT_FP16 if p.fmt == "fp16" else LUT_BF16, b, out)
    elif p.fmt in _FP8:
        _linear_scaled8(x, a["w"], LUT_FP8[p.fmt], a["scale"], b, out)
    elif p.fmt == "int8":
        _linear_scaled8(x, a["w"].view(np.uint8), LUT_INT8, a["scale"], b, out)
    elif p.fmt == "q8_0":
        blocks = a["d"].shape[1]
        xp = x if x.shape[1] == blocks * BLOCK else _scratch("pad", x.shape[0], blocks * BLOCK, x)
        _linear_q8_0(xp, a["qs"], a["d"], LUT_FP16, b, out)
    else:
        half = a["d"].shape[1] * 16
        x_lo, x_hi = _scratch("lo", x.shape[0], half), _scratch("hi", x.shape[0], half)
        _split_halves(x, x_lo, x_hi)
        _linear_q4(x_lo, x_hi, a["qs"], a["d"], a.get("m", _NO_M), p.fmt == "q4_0", LUT_FP16, b, out)
    return out
