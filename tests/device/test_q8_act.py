"""Products with int8 activations (`q8_act`): x's quantization against numpy, the integer
products against a float64 reference of the same quantized x and decoded weights, and the
two ways of computing byte products (x86 instructions, generic IR) against each other."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from tilesim.device.kernels import int_dot_ir, q8_act, quant
from tilesim.errors import ConfigError

U32 = 2.0**-24
seeds = st.integers(0, 2**32 - 1)


def gamma(n):
    return n * U32 / (1 - n * U32)


def quantize_reference(x):
    """numpy's float32 arithmetic, as the kernel does it: scale = max|x| / 127 per block of 32."""
    m, k = x.shape
    blocks = -(-k // 32)
    padded = np.zeros((m, blocks * 32), np.float32)
    padded[:, :k] = x
    b = padded.reshape(m, blocks, 32)
    scale = np.abs(b).max(axis=2) / np.float32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    codes = np.clip(np.rint(b * inverse[:, :, None]), -127, 127).astype(np.int8)
    return codes.reshape(m, -1), scale, codes.astype(np.int32).sum(axis=2)


def quantized(x):
    blocks = -(-x.shape[1] // 32)
    codes = np.empty((x.shape[0], blocks * 32), np.int8)
    scale = np.empty((x.shape[0], blocks), np.float32)
    sums = np.empty((x.shape[0], blocks), np.int32)
    scaled_sums = np.empty((x.shape[0], blocks), np.float32)
    q8_act.quantize_rows(x, blocks, codes, scale, sums, scaled_sums)
    assert np.array_equal(scaled_sums, scale * sums.astype(np.float32))
    return codes, scale, sums


def dequantized(x):
    codes, scale, _ = quantized(x)
    m, k = x.shape
    values = codes.reshape(m, scale.shape[1], 32).astype(np.float64) * scale[:, :, None]
    return values.reshape(m, -1)[:, :k]


@given(st.integers(1, 4), st.integers(1, 130), st.floats(1e-30, 1e30), st.booleans(), seeds)
def test_activations_quantize_to_the_nearest_of_255_steps_per_block(m, k, magnitude, zero_block, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * magnitude).astype(np.float32)
    if zero_block:
        x[:, :32] = 0.0
    codes, scale, sums = quantized(x)
    want_codes, want_scale, want_sums = quantize_reference(x)
    assert np.array_equal(codes, want_codes)
    assert np.array_equal(scale, want_scale)
    assert np.array_equal(sums, want_sums)
    step = np.repeat(scale.astype(np.float64), 32, axis=1)[:, :k]
    error = np.abs(codes[:, :k] * step - x.astype(np.float64))
    assert np.all(error <= step * (0.5 + 1e-5) + 1e-45)


def test_a_nan_or_infinity_in_x_makes_its_row_nan_not_a_silent_number():
    p = quant.pack(np.ones((3, 64), np.float32), "q4_1")
    x = np.ones((2, 64), np.float32)
    x[0, 40] = np.nan
    x[1, 3] = np.inf
    out = np.zeros((2, 3), np.float32)
    quant.linear(x, p, None, out, "int8")
    assert np.all(np.isnan(out))


def _bound(xq, decoded, bias, blocks):
    magnitude = np.abs(xq) @ np.abs(decoded.astype(np.float64)).T
    return 4 * gamma(blocks + 16) * (magnitude + (0 if bias is None else np.abs(bias))) + 1e-30


@given(
    st.lists(st.sampled_from((*q8_act.FORMATS, "fp32")), min_size=1, max_size=3),
    st.integers(1, 6),
    st.integers(1, 1100),  # up to 35 blocks: whole groups of 16, pairs and a single block
    st.booleans(),
    seeds,
)
def test_block_weights_meet_the_quantized_x_in_exact_integer_products(weight_group, fmts, m, k, with_bias, seed):
    # block weights of any mix share one launch; an fp32 weight in the group still takes fp32 x
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    xq = dequantized(x)
    packs, biases, outs = weight_group(rng, fmts, m, k, with_bias)
    quant.linear_group(x, packs, biases, outs, "int8")
    for p, b, out in zip(packs, biases, outs, strict=True):
        decoded = quant.unpack(p)
        xin = x.astype(np.float64) if p.fmt == "fp32" else xq
        ref = xin @ decoded.astype(np.float64).T + (0 if b is None else b)
        assert np.all(np.abs(out - ref) <= _bound(xin, decoded, b, -(-k // 32)))


def test_int8_activations_differ_from_fp32_by_the_quantization_of_x_only():
    # the quantization of x moves a product by at most half a step per value
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 576)).astype(np.float32)
    p = quant.pack(rng.standard_normal((64, 576)).astype(np.float32), "q4_1")
    got, exact = np.empty((2, 64), np.float32), np.empty((2, 64), np.float32)
    quant.linear(x, p, None, got, "int8")
    quant.linear(x, p, None, exact)
    _, scale, _ = quantized(x)
    half_step = np.repeat(scale.astype(np.float64) / 2, 32, axis=1)
    allowed = half_step @ np.abs(quant.unpack(p).astype(np.float64)).T
    assert np.max(np.abs(got - exact)) > 0 and np.all(np.abs(got - exact) <= allowed * 1.01 + 1e-6)


def _row_callers(how):
    """fmt -> a compiled call of that format's row with the `how` byte products (built once:
    each njit compiles on its first call)."""
    q4_1, q4_0, q8_0 = int_dot_ir.make_rows(how)
    return {
        "q4_1": njit(lambda qx, dx, qsum, qs, d, m: q4_1(qx, dx, dx * qsum.astype(np.float32), qs, d, m)),
        "q4_0": njit(lambda qx, dx, qsum, qs, d, m: q4_0(qx, dx, qsum, qs, d)),
        "q8_0": njit(lambda qx, dx, qsum, qs, d, m: q8_0(qx, dx, qs, d)),
    }


ROWS = {how: _row_callers(how) for how in {"generic", int_dot_ir.host_int_dots()}}


NO_AVX2 = "numba compiles for a CPU without AVX2: only the generic path"


@pytest.mark.skipif(int_dot_ir.host_int_dots() == "generic", reason=NO_AVX2)
@pytest.mark.parametrize("fmt", ["q4_1", "q4_0", "q8_0"])
@given(st.integers(1, 40), seeds)
def test_x86_byte_products_give_the_generic_paths_bits(fmt, blocks, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((1, blocks * 32)) * 3).astype(np.float32)
    codes, scale, sums = quantized(x)
    p = quant.pack(rng.standard_normal((1, blocks * 32)).astype(np.float32), fmt)
    qs = p.arrays["qs"][0].view(np.uint8)
    d = p.arrays["d"][0]  # fp16 bits, as stored
    m = p.arrays["m"][0] if "m" in p.arrays else d
    args = (codes[0], scale[0], sums[0], qs, d, m)
    host = ROWS[int_dot_ir.host_int_dots()][fmt](*args)
    generic = ROWS["generic"][fmt](*args)
    assert np.float32(host).tobytes() == np.float32(generic).tobytes()
    decoded = quant.unpack(p).astype(np.float64)
    want = (dequantized(x) @ decoded.T)[0, 0]
    assert abs(host - want) <= _bound(dequantized(x), decoded, None, blocks)[0, 0]


def test_products_take_fp32_or_int8_activations_only():
    p = quant.pack(np.ones((2, 32), np.float32), "q4_1")
    with pytest.raises(ConfigError, match="fp32 or int8 activations"):
        quant.linear(np.ones((1, 32), np.float32), p, None, np.empty((1, 2), np.float32), "fp16")
