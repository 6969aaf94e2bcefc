"""Low-precision weights and KV caches: each kernel against a float64 reference of the same
decoded values, and the decoding itself against the formats' own libraries (gguf, ml_dtypes)."""

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from tilesim.device.kernels import attention, quant, reference, vector_ir

U32 = 2.0**-24
seeds = st.integers(0, 2**32 - 1)


def gamma(n):
    return n * U32 / (1 - n * U32)


@given(st.sampled_from(quant.FORMATS), st.integers(1, 4), st.integers(1, 70), st.integers(1, 130), st.booleans(), seeds)
def test_every_format_computes_x_times_its_decoded_weights(fmt, m, n, k, with_bias, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 2).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    packed = quant.pack(w, fmt)
    decoded = quant.unpack(packed)
    assert decoded.shape == (n, k) and decoded.dtype == np.float32
    out = np.full((m, n), np.nan, np.float32)
    quant.linear(x, packed, bias, out)
    ref = reference.linear(x, decoded, bias)
    assert out.shape == ref.shape and out.dtype == np.float32
    # Scales multiply once more than a plain dot product: allow a few more roundings.
    magnitude = np.abs(x).astype(np.float64) @ np.abs(decoded).T.astype(np.float64)
    bound = gamma(k + 8) * (magnitude + (0 if bias is None else np.abs(bias)))
    assert np.all(np.abs(out - ref) <= 4 * bound + 1e-30)


def _bound(x, decoded, bias, k):
    magnitude = np.abs(x).astype(np.float64) @ np.abs(decoded).T.astype(np.float64)
    return 4 * gamma(k + 8) * (magnitude + (0 if bias is None else np.abs(bias))) + 1e-30


@given(
    st.lists(st.sampled_from(quant.FORMATS), min_size=1, max_size=3),
    st.integers(1, 6),
    st.integers(1, 130),
    st.booleans(),
    seeds,
)
def test_a_group_of_weights_on_one_input_gives_each_weights_product(weight_group, fmts, m, k, with_bias, seed):
    # one kernel launch when the group shares a nibble format, one call each otherwise: same contract
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    packs, biases, outs = weight_group(rng, fmts, m, k, with_bias)
    quant.linear_group(x, packs, biases, outs)
    for p, b, out in zip(packs, biases, outs, strict=True):
        decoded = quant.unpack(p)
        assert np.all(np.abs(out - reference.linear(x, decoded, b)) <= _bound(x, decoded, b, k))


@pytest.mark.parametrize("fmt", quant.FORMATS)
@given(st.integers(1, 40), st.integers(1, 100), st.integers(2, 11), st.booleans(), seeds)
def test_a_prefill_gives_each_row_what_a_decode_step_gives_it(fmt, n, k, rows, with_bias, seed):
    """Several x rows go through `vector_ir`'s `*_rows` forms X_ROWS at a time (the rest one
    by one; block formats decode each weight row once first); every row's sums must be the
    one-row sums, bit for bit (x with an infinity and a zero of either sign now and then)."""
    rng = np.random.default_rng(seed)
    packed = quant.pack(rng.standard_normal((n, k)).astype(np.float32), fmt)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x[rng.integers(0, rows, size=2), rng.integers(0, k, size=2)] = rng.choice(
        np.array([np.inf, -0.0, 0.0], np.float32), size=2
    )
    together = quant.linear(x, packed, bias, np.empty((rows, n), np.float32))
    for m in range(rows):
        alone = quant.linear(x[m : m + 1], packed, bias, np.empty((1, n), np.float32))
        assert together[m].tobytes() == alone[0].tobytes()


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1"])
@given(st.integers(1, 12), st.integers(0, 4), seeds)
def test_nibble_rows_taken_four_at_a_time_give_each_rows_own_bits(fmt, blocks, first, seed):
    """`vector_ir.q4_*_rows` interleaves ROWS rows' sums; each must be `q4_*_row`'s, bit for
    bit (x with an infinity and a zero of either sign now and then)."""
    rng = np.random.default_rng(seed)
    rows, k = first + vector_ir.ROWS, 32 * blocks
    packed = quant.pack(rng.standard_normal((rows, k)).astype(np.float32), fmt)
    x = rng.standard_normal((1, k)).astype(np.float32)
    x[0, rng.integers(0, k, size=2)] = rng.choice(np.array([np.inf, -0.0, 0.0], np.float32), size=2)
    xl, xh = quant._split_halves(x, blocks)
    qs, d, m = packed.arrays["qs"], packed.arrays["d"], packed.arrays.get("m", packed.arrays["d"])
    four, one = _BOTH[fmt](xl[0], xh[0], qs, d, m, first)
    assert np.array(four, np.float32).tobytes() == one.tobytes()


def _rows_and_row(asymmetric):
    @njit
    def both(xl, xh, qs, d, m, first):
        one = np.empty(vector_ir.ROWS, np.float32)
        for r in range(vector_ir.ROWS):
            n = first + r
            if asymmetric:
                one[r] = vector_ir.q4_1_row(xl, xh, qs[n], d[n], m[n])
            else:
                one[r] = vector_ir.q4_0_row(xl, xh, qs[n], d[n])
        four = vector_ir.q4_1_rows(xl, xh, qs, d, m, first) if asymmetric else vector_ir.q4_0_rows(xl, xh, qs, d, first)
        return four, one

    return both


_BOTH = {"q4_0": _rows_and_row(False), "q4_1": _rows_and_row(True)}  # compiled once, not per example


def _widen_each(row):
    @njit
    def widen(codes):  # each code alone (the scalar path) and sixteen times over (the vector path)
        one, sixteen = np.empty(codes.size, np.float32), np.empty(codes.size, np.float32)
        x1, x16 = np.ones(1, np.float32), np.ones(16, np.float32)
        w1, w16 = np.empty(1, codes.dtype), np.empty(16, codes.dtype)
        for i in range(codes.size):
            w1[0] = codes[i]
            w16[:] = codes[i]
            one[i] = row(x1, w1)
            sixteen[i] = row(x16, w16)
        return one, sixteen

    return widen


@pytest.mark.parametrize(
    ("row", "codes", "dtype"),
    [
        (vector_ir.fp16_row, np.arange(65536, dtype=np.uint16), np.float16),
        (vector_ir.bf16_row, np.arange(65536, dtype=np.uint16), ml_dtypes.bfloat16),
        (vector_ir.fp8_e4m3_row, np.arange(256, dtype=np.uint8), ml_dtypes.float8_e4m3fn),
        (vector_ir.fp8_e5m2_row, np.arange(256, dtype=np.uint8), ml_dtypes.float8_e5m2),
        (vector_ir.int8_row, np.arange(-128, 128, dtype=np.int8), np.int8),
    ],
)
def test_every_code_widens_to_the_value_its_format_library_gives(row, codes, dtype):
    expected = codes.view(dtype).astype(np.float32) if dtype is not np.int8 else codes.astype(np.float32)
    one, sixteen = _widen_each(row)(codes)
    assert np.array_equal(one, expected, equal_nan=True)
    with np.errstate(over="ignore", invalid="ignore"):  # nan and inf codes; bf16's largest overflow x16
        assert np.array_equal(sixteen, expected * np.float32(16), equal_nan=True)


@pytest.mark.parametrize(("fmt", "qtype"), [("q4_0", "Q4_0"), ("q4_1", "Q4_1"), ("q8_0", "Q8_0"), ("int4", "Q4_1")])
@given(st.integers(1, 20), st.integers(1, 6), seeds)
def test_block_formats_decode_exactly_as_the_gguf_library(fmt, qtype, n, blocks, seed):
    w = np.random.default_rng(seed).standard_normal((n, blocks * 32)).astype(np.float32)
    raw = quantize(w, getattr(GGMLQuantizationType, qtype))
    expected = dequantize(raw, getattr(GGMLQuantizationType, qtype))
    assert np.array_equal(quant.unpack(quant.from_blocks(raw, fmt, w.shape)), expected)
    assert np.array_equal(quant.unpack(quant.pack(w, fmt)), expected)
    assert quant.from_blocks(raw, fmt, w.shape).nbytes == raw.nbytes  # the same bytes, rearranged


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [
        ("fp16", np.float16),
        ("bf16", ml_dtypes.bfloat16),
        ("fp8_e4m3", ml_dtypes.float8_e4m3fn),
        ("fp8_e5m2", ml_dtypes.float8_e5m2),
    ],
)
def test_float_formats_round_as_ml_dtypes_does(fmt, dtype):
    w = np.random.default_rng(0).standard_normal((7, 33)).astype(np.float32)
    decoded = quant.unpack(quant.pack(w, fmt))
    if fmt.startswith("fp8"):
        scale = quant.pack(w, fmt).arrays["scale"][:, None]
        assert np.array_equal(decoded, (w / scale).astype(dtype).astype(np.float32) * scale)
    else:
        assert np.array_equal(decoded, w.astype(dtype).astype(np.float32))


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
def test_quantization_error_stays_within_half_a_step(fmt):
    w = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    decoded = quant.unpack(quant.pack(w, fmt))
    if fmt == "int8":  # half of one step of absmax / 127 per row
        step = np.abs(w).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(decoded - w) <= 0.5 * step * (1 + 1e-5))
    elif fmt == "int4":  # half of (max - min) / 15 per block of 32, plus fp16 rounding of d and m
        blocks = w.reshape(16, 2, 32)
        step = (blocks.max(-1) - blocks.min(-1)) / 15
        err = np.abs(decoded - w).reshape(16, 2, 32).max(-1)
        assert np.all(err <= 0.5 * step + 0.01 * np.abs(w).max())
    else:  # e4m3 keeps 3 mantissa bits: relative error within 2**-4 of the scaled value
        assert np.all(np.abs(decoded - w) <= np.abs(w) * 2**-4 + 1e-6)


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8", "int8"])
@given(st.integers(1, 2), st.integers(1, 4), st.sampled_from([(2, 1), (4, 2), (3, 3)]), st.integers(1, 24), seeds)
def test_attention_over_a_narrow_cache_uses_its_decoded_values(fmt, batch, t_len, heads, d, seed):
    from tilesim.runtime.kvcache import KVCache, kv_arrays

    hq, hkv = heads
    rng = np.random.default_rng(seed)
    context = 16
    arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in kv_arrays(fmt, batch, hkv, context, d).items()}
    cache = KVCache(fmt, **arrays)
    start = rng.integers(0, context - t_len + 1, size=batch)
    valid = np.full(batch, t_len)
    k, v = rng.standard_normal((2, batch, t_len, hkv, d)).astype(np.float32)
    cache.write(k, v, start, valid)
    q = rng.standard_normal((batch, t_len, hq, d)).astype(np.float32)
    out = np.full_like(q, np.nan)
    cache.attend(q, start, valid, 1 / np.sqrt(d), out, 0)
    lut = attention.kv_lut(fmt)
    k_dec, v_dec = lut[cache.k].astype(np.float64), lut[cache.v].astype(np.float64)
    if fmt == "int8":
        k_dec, v_dec = k_dec * cache.k_scale[..., None], v_dec * cache.v_scale[..., None]
    ref = reference.attention(q, k_dec, v_dec, start, valid, 1 / np.sqrt(d))
    assert out.shape == ref.shape
    written = (slice(None), slice(None), slice(int(start.min()), int(start.max()) + t_len))
    assert np.all(np.isfinite(cache.k[written].astype(np.float64)))
    assert np.allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(v_dec).max())
