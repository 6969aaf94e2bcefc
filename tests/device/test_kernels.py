"""Every numba kernel against its float64 numpy reference, on hypothesis-drawn shapes.

Each test checks shape and dtype first, then values within the tolerance stated for fp32:
- products and sums of K terms (linear, attention scores): |error| <= gamma(K) * sum |terms|,
  with gamma(n) = n u / (1 - n u) and u = 2**-24, which holds for any order of summation;
- norms, activations, rotary: relative 2e-6 of each value plus 2e-6 of the row's scale
  (a few roundings of fp32 per element), plus, where the formula cancels (layer norm's
  x - mean, gelu's 1 + tanh), the absolute error fp32 leaves at that cancellation.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tilesim.device.kernels import activations, attention, elementwise, matmul, norms, reference, rotary

U32 = 2.0**-24
dims = st.integers(1, 70)
seeds = st.integers(0, 2**32 - 1)


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def check_shape(out, ref):
    assert out.shape == ref.shape
    assert out.dtype == np.float32


def check_close(out, ref, rel=2e-6, floor=0.0):
    check_shape(out, ref)
    scale = np.abs(ref).max(axis=-1, keepdims=True) if ref.ndim else abs(ref)
    assert np.all(np.abs(out - ref) <= rel * np.abs(ref) + rel * scale + floor + 1e-30)


@given(dims, dims, dims, st.booleans(), seeds)
def test_linear(m, n, k, with_bias, seed):
    rng = np.random.default_rng(seed)
    x, w = rand(rng, m, k), rand(rng, n, k)
    b = rand(rng, n) if with_bias else None
    out = np.empty((m, n), np.float32)
    matmul.linear(x, w, b, out)
    ref = reference.linear(x, w, b)
    check_shape(out, ref)
    bound = gamma(k + 1) * (np.abs(x).astype(np.float64) @ np.abs(w).T + (0 if b is None else np.abs(b)))
    assert np.all(np.abs(out - ref) <= bound)


@given(dims, st.integers(1, 4), st.sampled_from([2, 16, 64]), seeds)
def test_a_norm_over_each_head_is_each_heads_rms_norm(m, heads, d, seed):
    """Qwen3's q_norm/k_norm: every head's d features a row of its own, against float64; also
    on a strided view (the executor's rows of a wider buffer)."""
    rng = np.random.default_rng(seed)
    x, w = rand(rng, m, heads * d, scale=3.0), rand(rng, d)
    ref = reference.rms_norm(x.reshape(m * heads, d), w, 1e-6).reshape(m, heads * d)
    out = np.full_like(x, np.nan)
    norms.head_rms_norm(x, w, 1e-6, out)
    check_close(out, ref, rel=4e-6)
    wide = np.full((m, heads * d + 5), np.nan, np.float32)
    wide[:, : heads * d] = x
    norms.head_rms_norm(wide[:, : heads * d], w, 1e-6, wide[:, : heads * d])  # in place, strided
    check_close(wide[:, : heads * d], ref, rel=4e-6)
    assert np.isnan(wide[:, heads * d :]).all()


@given(dims, dims, seeds)
def test_norms(m, k, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, m, k, scale=3.0), rand(rng, k), rand(rng, k)
    out = np.empty_like(x)
    norms.rms_norm(x, w, 1e-5, out)
    check_close(out, reference.rms_norm(x, w, 1e-5), rel=4e-6)
    norms.layer_norm(x, w, b, 1e-5, out)
    # x - mean cancels in a nearly constant row: fp32 leaves ~(k + 2) u max|x| in it, which
    # the division by the row's deviation magnifies
    x64 = x.astype(np.float64)
    deviation = np.sqrt(x64.var(axis=-1, keepdims=True) + 1e-5)
    floor = 4 * (k + 2) * U32 * np.abs(x64).max(axis=-1, keepdims=True) / deviation * np.abs(w)
    check_close(out, reference.layer_norm(x, w, b, 1e-5), rel=4e-6 * np.sqrt(k), floor=floor)


@given(dims, dims, seeds, st.sampled_from(sorted(activations.ACTIVATIONS)))
def test_activations(m, k, seed, kind):
    rng = np.random.default_rng(seed)
    x = rand(rng, m, k, scale=4.0)
    out = np.empty_like(x)
    activations.ACTIVATIONS[kind](x, out)
    # gelu's 1 + tanh (or erf) cancels for negative x: fp32 keeps an absolute error ~u |x|
    check_close(out, getattr(reference, kind)(x), floor=2e-6 * np.abs(x))


@given(dims, dims, seeds)
def test_silu_mul_and_softmax(m, k, seed):
    rng = np.random.default_rng(seed)
    gate, up = rand(rng, m, k, scale=3.0), rand(rng, m, k)
    out = np.empty_like(gate)
    activations.silu_mul(gate, up, out)
    check_close(out, reference.silu_mul(gate, up))
    activations.softmax_rows(gate, out)
    check_close(out, reference.softmax_rows(gate), rel=4e-6)


@given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 16), st.sampled_from(["neox", "gptj"]), seeds)
def test_rotary(m, heads, half, style, seed):
    rng = np.random.default_rng(seed)
    d = 2 * half + int(rng.integers(0, 3))  # rotary on the first 2*half features only
    rot = 2 * half
    x = rand(rng, m, heads, d)
    positions = rng.integers(0, 64, size=m)
    inv_freq = rotary.rope_inv_freq(rot, 10000.0)
    cos, sin = rotary.rope_tables(64, inv_freq)
    out = x.copy()
    rotary.rope(out, positions, cos, sin, rot, style)
    ref = reference.rope(x, positions, inv_freq, rot, style)
    check_shape(out, ref)
    # The angle itself is rounded to fp32 (as transformers does): error up to ~position * u.
    assert np.allclose(out, ref, rtol=0, atol=64 * 8 * U32 * np.abs(x).max() + 1e-6)


@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 3), (3, 3)]),
    st.integers(1, 20),
    st.integers(0, 6),
    seeds,
)
def test_attention_prefill_and_decode_with_grouped_heads(batch, t_len, heads, d, window, seed):
    hq, hkv = heads
    rng = np.random.default_rng(seed)
    context = 32
    start = rng.integers(0, context - t_len + 1, size=batch)
    valid = rng.integers(0, t_len + 1, size=batch)
    q = rand(rng, batch, t_len, hq, d)
    k_cache, v_cache = rand(rng, batch, hkv, context, d), rand(rng, batch, hkv, context, d)
    out = np.full_like(q, np.nan)
    attention.attention(q, k_cache, v_cache, start, valid, 1 / np.sqrt(d), out, window=window)
    ref = reference.attention(q, k_cache, v_cache, start, valid, 1 / np.sqrt(d), window)
    check_shape(out, ref)
    bound = gamma(d + context + 8) * 8 * np.abs(v_cache).max() * max(1.0, np.abs(q).max() * np.abs(k_cache).max() * d)
    assert np.all(np.abs(out - ref) <= bound)


@given(st.integers(1, 2), st.integers(1, 5), st.sampled_from([(2, 2), (4, 4), (3, 3)]), st.integers(1, 16), seeds)
def test_attention_with_alibi_slopes_against_the_reference(batch, t_len, heads, d, seed):
    """BLOOM's position biases: slopes[h] * key position added to the scores, over an fp32
    cache and over fp16 codes."""
    from tilesim.runtime.kvcache import KVCache, kv_arrays

    hq, hkv = heads
    rng = np.random.default_rng(seed)
    context = 24
    slopes = (2.0 ** -rng.integers(1, 8, size=hq)).astype(np.float32)
    start = rng.integers(0, context - t_len + 1, size=batch)
    valid = np.full(batch, t_len)
    q = rand(rng, batch, t_len, hq, d)
    k_cache, v_cache = rand(rng, batch, hkv, context, d), rand(rng, batch, hkv, context, d)
    out = np.full_like(q, np.nan)
    attention.attention(q, k_cache, v_cache, start, valid, 1 / np.sqrt(d), out, slopes=slopes)
    ref = reference.attention(q, k_cache, v_cache, start, valid, 1 / np.sqrt(d), slopes=slopes)
    flat = reference.attention(q, k_cache, v_cache, start, valid, 1 / np.sqrt(d))
    check_shape(out, ref)
    assert np.allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(v_cache).max())
    assert t_len * (start.max() + 1) == 1 or not np.allclose(ref, flat), "the slopes move the weights"
    arrays = {n: np.zeros(shape, dt) for n, (shape, dt) in kv_arrays("fp16", batch, hkv, context, d).items()}
    cache = KVCache("fp16", **arrays)
    cache.write(k_cache.transpose(0, 2, 1, 3)[:, :context], v_cache.transpose(0, 2, 1, 3)[:, :context],
                np.zeros(batch, np.int64), np.full(batch, context))  # fmt: skip
    coded = np.full_like(q, np.nan)
    cache.attend(q, start, valid, 1 / np.sqrt(d), coded, 0, slopes)
    lut = attention.kv_lut("fp16")
    ref16 = reference.attention(q, lut[cache.k], lut[cache.v], start, valid, 1 / np.sqrt(d), slopes=slopes)
    assert np.allclose(coded, ref16, rtol=1e-5, atol=1e-5 * np.abs(v_cache).max())


def test_kv_write_stores_valid_rows_at_their_positions():
    rng = np.random.default_rng(0)
    k, v = rand(rng, 2, 3, 2, 4), rand(rng, 2, 3, 2, 4)
    k_cache, v_cache = np.zeros((2, 2, 8, 4), np.float32), np.zeros((2, 2, 8, 4), np.float32)
    attention.kv_write(k, v, k_cache, v_cache, np.array([1, 5]), np.array([3, 2]))
    assert np.array_equal(k_cache[0, :, 1:4], k[0].transpose(1, 0, 2))
    assert np.array_equal(v_cache[1, :, 5:7], v[1, :2].transpose(1, 0, 2))
    assert not k_cache[1, :, 7].any() and not k_cache[0, :, 0].any()


@given(st.integers(1, 30), st.integers(1, 40), st.integers(0, 40), seeds)
def test_vocabulary_parallel_embedding(m, v_local, vocab_start, seed):
    rng = np.random.default_rng(seed)
    table = rand(rng, v_local, 8)
    ids = rng.integers(0, vocab_start + v_local + 5, size=m)
    out = np.full((m, 8), np.nan, np.float32)
    elementwise.embed(ids, table, vocab_start, out)
    ref = reference.embed(ids, table, vocab_start)
    check_shape(out, ref)
    assert np.array_equal(out, ref.astype(np.float32))


@given(dims, dims, seeds)
def test_add_and_add_bias(m, n, seed):
    rng = np.random.default_rng(seed)
    a, b, bias = rand(rng, m, n), rand(rng, m, n), rand(rng, n)
    out = np.empty_like(a)
    elementwise.add(a, b, out)
    assert np.array_equal(out, a + b)  # one rounding of an exact sum: identical to numpy's
    elementwise.add_bias(out, bias)
    assert np.array_equal(out, (a + b) + bias)


@given(dims, dims, seeds)
def test_a_residual_add_and_its_norm_in_one_call_give_the_two_calls_bits(m, k, seed):
    rng = np.random.default_rng(seed)
    a, b, w, bias = rand(rng, m, k), rand(rng, m, k), rand(rng, k), rand(rng, k)
    for layer_bias in (None, bias):
        s, out = np.empty((m, k), np.float32), np.empty((m, k), np.float32)
        norms.add_norm(a, b, s, w, layer_bias, 1e-5, out)
        want_s = elementwise.add(a, b, np.empty((m, k), np.float32))
        want = np.empty((m, k), np.float32)
        if layer_bias is None:
            norms.rms_norm(want_s, w, 1e-5, want)
        else:
            norms.layer_norm(want_s, w, layer_bias, 1e-5, want)
        assert np.array_equal(s, want_s) and np.array_equal(out, want)
