"""The numeric promises of docs/numerics.md that belong to the kernels, each tested as stated.

- Bit-identical whatever numba's thread count, and a row of a prefill gets the bits a decode
  step computing it alone gets: every weight format, both activation types, attention over
  an fp32 cache (its serial and parallel variants).
- NaN and infinity propagate as IEEE arithmetic says (no kernel is compiled with flags that
  assume them away), so a product row that meets one is NaN, never a plausible number.
- Bit-identical across compile targets: `test_fingerprint` hashes the outputs of every
  kernel that promises it on fixed inputs; `tests/cpu_targets.py` (`make test-targets`) runs
  it for several CPU targets and compares the hashes.
"""

import hashlib
import json
import os
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from tilesim.device.kernels import activations, attention, elementwise, matmul, norms, quant, rotary, vector_ir

seeds = st.integers(0, 2**32 - 1)
INT8_ACT = ("q4_0", "q4_1", "q8_0")


def _product(x, packed, act="fp32"):
    out = np.full((x.shape[0], packed.shape[0]), np.nan, np.float32)
    return quant.linear(x, packed, None, out, act)


@pytest.mark.parametrize("act", ["fp32", "int8"])
@pytest.mark.parametrize("fmt", quant.FORMATS)
@given(st.integers(1, 80), st.integers(1, 100), seeds)  # 80 rows: two 32-row tiles a thread on 2 threads
def test_a_prefill_row_and_a_decode_row_get_the_same_bits_in_every_format(fmt, act, n, k, seed):
    if act == "int8" and fmt not in (*INT8_ACT, "int4"):
        return
    rng = np.random.default_rng(seed)
    packed = quant.pack(rng.standard_normal((n, k)).astype(np.float32), fmt)
    x = rng.standard_normal((6, k)).astype(np.float32)  # enough rows for the decode-once path
    together = _product(x, packed, act)
    for m in range(6):
        assert _product(x[m : m + 1], packed, act)[0].tobytes() == together[m].tobytes()


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "q4_1", "q8_0"])
def test_the_thread_count_does_not_change_a_bit(fmt):
    rng = np.random.default_rng(7)
    packed = quant.pack(rng.standard_normal((67, 130)).astype(np.float32), fmt)
    x = rng.standard_normal((5, 130)).astype(np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append(_product(x, packed).tobytes())  # linear binds the thread count per call
    finally:
        numba.set_num_threads(before)
    assert len(set(results)) == 1


@given(st.integers(1, 3), st.integers(1, 9), st.sampled_from([(2, 1), (4, 2), (3, 3)]), st.integers(1, 40), seeds)
def test_fp32_attention_gives_its_serial_and_parallel_variants_the_same_bits(batch, t_len, heads, d, seed):
    hq, hkv = heads
    rng = np.random.default_rng(seed)
    context = 16
    k_cache, v_cache = rng.standard_normal((2, batch, hkv, context, d)).astype(np.float32)
    q = rng.standard_normal((batch, t_len, hq, d)).astype(np.float32)
    start = rng.integers(0, context - t_len + 1, size=batch).astype(np.int64)
    valid = np.full(batch, t_len, np.int64)
    outs = []
    for fn in (attention._attention_serial, attention._attention_parallel):
        out = np.full_like(q, np.nan)
        fn(q, k_cache, v_cache, start, valid, np.float32(0.125), 0, attention.no_slopes(hq), out)
        outs.append(out.tobytes())
    assert outs[0] == outs[1]
    # a decode step (one query row) at position start + t gets that row of the prefill
    prefill = np.frombuffer(outs[0], np.float32).reshape(q.shape)
    for t in range(t_len):
        one = np.full_like(q[:, t : t + 1], np.nan)
        attention.attention(q[:, t : t + 1].copy(), k_cache, v_cache, start + t, np.ones(batch, np.int64), 0.125, one)
        assert one[:, 0].tobytes() == prefill[:, t].tobytes()


@njit
def _weighted_loop(p, values, lo, n, out):  # the scalar loop vector_ir.weighted_rows stands for
    for i in range(out.size):
        out[i] = 0.0
    for j in range(n):
        for i in range(out.size):
            out[i] += p[j] * values[lo + j, i]


@njit
def _weighted_ir(p, values, lo, n, out):
    vector_ir.weighted_rows(p, values, lo, n, out)


@given(st.integers(1, 150), st.integers(0, 40), st.integers(0, 5), seeds)
def test_attentions_weighted_sum_gives_the_scalar_loops_bits(d, n, lo, seed):
    """Every row width (groups of 64 lanes, then 16, then one), with an infinity, a NaN and
    zeros of either sign now and then."""
    rng = np.random.default_rng(seed)
    p = rng.random(max(n, 1)).astype(np.float32)
    values = rng.standard_normal((lo + n + 1, d)).astype(np.float32)
    specials = np.array([np.inf, np.nan, -0.0, 0.0], np.float32)
    values[rng.integers(0, values.shape[0], 3), rng.integers(0, d, 3)] = rng.choice(specials, 3)
    loop, vector = np.full(d, 7.0, np.float32), np.full(d, 7.0, np.float32)
    _weighted_loop(p, values, lo, n, loop)
    _weighted_ir(p, values, lo, n, vector)
    assert vector.tobytes() == loop.tobytes()


@pytest.mark.parametrize("act", ["fp32", "int8"])
@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_infinity_in_x_makes_its_rows_nan_or_infinite_in_every_format(fmt, act, bad):
    if act == "int8" and fmt not in (*INT8_ACT, "int4"):
        return
    rng = np.random.default_rng(3)
    k = 70
    w = rng.standard_normal((9, k)).astype(np.float32)
    packed = quant.pack(w, fmt)
    x = rng.standard_normal((6, k)).astype(np.float32)
    x[1, 40] = bad
    for rows in (x, x[1:2]):  # the prefill path and the decode path
        out = _product(rows, packed, act)
        poisoned = out[1] if rows.shape[0] == 6 else out[0]
        assert not np.any(np.isfinite(poisoned)), f"{fmt} {act}: a non-finite input gave {poisoned}"
        if rows.shape[0] == 6:
            assert np.all(np.isfinite(np.delete(out, 1, axis=0)))  # the other rows are untouched


def _fingerprints() -> dict[str, str]:
    """sha256 of each promised-bit-identical kernel's output on fixed inputs."""
    rng = np.random.default_rng(2024)
    out: dict[str, str] = {}

    def put(name, a):
        out[name] = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

    k = 200  # six whole blocks and a partial one
    w = (rng.standard_normal((37, k)) * 2).astype(np.float32)
    x = rng.standard_normal((7, k)).astype(np.float32)
    bias = rng.standard_normal(37).astype(np.float32)
    for fmt in quant.FORMATS:
        packed = quant.pack(w, fmt)
        for rows in (1, 7):
            o = np.empty((rows, 37), np.float32)
            put(f"linear {fmt} M={rows}", quant.linear(x[:rows], packed, bias, o))
            if fmt in (*INT8_ACT, "int4"):
                put(f"linear {fmt} int8 activations M={rows}", quant.linear(x[:rows], packed, bias, o, "int8"))
    outs = [np.empty((7, 37), np.float32) for _ in range(3)]
    quant.linear_group(x, [quant.pack(w, "q4_1")] * 3, [bias, None, bias], outs)
    put("linear_group q4_1 x3", np.stack(outs))
    o = np.empty((7, 37), np.float32)
    put("matmul fp32", matmul.linear(x, w, bias, o))
    h = rng.standard_normal((5, 96)).astype(np.float32) * 3
    g, b = rng.standard_normal((2, 96)).astype(np.float32)
    y = np.empty_like(h)
    put("rms_norm", norms.rms_norm(h, g, 1e-5, y))
    put("layer_norm", norms.layer_norm(h, g, b, 1e-5, y))
    s = np.empty_like(h)
    norms.add_norm(h, h[::-1].copy(), s, g, None, 1e-5, y)
    put("add_norm", np.stack([s, y]))
    for name, fn in activations.ACTIVATIONS.items():
        put(name, fn(h, np.empty_like(h)))
    put("silu_mul", activations.silu_mul(h, h[::-1].copy(), np.empty_like(h)))
    put("softmax_rows", activations.softmax_rows(h, np.empty_like(h)))
    put("add", elementwise.add(h, h[::-1].copy(), np.empty_like(h)))
    cos, sin = rotary.rope_tables(32, rotary.rope_inv_freq(16, 10000.0))
    for style in ("neox", "gptj"):
        r = rng.standard_normal((4, 3, 16)).astype(np.float32)
        put(f"rope {style}", rotary.rope(r, np.arange(4, dtype=np.int64) * 3, cos, sin, 16, style))
    q = rng.standard_normal((2, 5, 4, 24)).astype(np.float32)
    kc, vc = rng.standard_normal((2, 2, 2, 16, 24)).astype(np.float32)
    start, valid = np.array([0, 7], np.int64), np.array([5, 3], np.int64)
    a = np.empty_like(q)
    put("attention fp32 prefill", attention.attention(q, kc, vc, start, valid, 0.2, a))
    a1 = np.empty_like(q[:, :1])
    put("attention fp32 decode", attention.attention(q[:, :1].copy(), kc, vc, start + 5, np.ones(2, np.int64), 0.2, a1))
    return out


def test_fingerprint():
    """The hashes themselves say nothing alone (they are compared across targets by
    tests/cpu_targets.py); here: they are a pure function of the inputs within one process."""
    first = _fingerprints()
    assert first == _fingerprints()
    folder = os.environ.get("TILESIM_FINGERPRINTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "kernels.json").write_text(json.dumps(first, indent=1, sort_keys=True))
