"""One op on every core in one call (device/kernels/cores.py): the same bits as the per-core
kernels (which tests/device/test_quant.py and test_kernels.py check against float64), and
within the float64 reference's bound on their own."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesim.device.kernels import activations, cores, norms, quant, reference, replicas
from tilesim.device.kernels.addresses import Table

seeds = st.integers(0, 2**32 - 1)
U32 = 2.0**-24


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["fp32", "q4_0", "q4_1", "int4", "q8_0"]),
    st.integers(1, 5),
    st.integers(1, 3),
    st.sampled_from([1, 2, 5]),
    st.integers(1, 100),
    st.booleans(),
    st.booleans(),
    seeds,
)
def test_every_cores_products_in_one_call_equal_the_per_core_kernels(
    fmt, n_cores, group, m, k, with_bias, uneven, seed
):
    """Also with cores of different input widths (an uneven split: SmolLM2's MLP over 9 cores
    is 192 on three and 160 on six)."""
    rng = np.random.default_rng(seed)
    rows = m + 2  # the planned views hold more rows than a step uses
    widths = [k] + [int(w) for w in rng.integers(1, 101, size=n_cores - 1)] if uneven else [k] * n_cores
    xs = [rng.standard_normal((rows, w)).astype(np.float32) for w in widths]
    packs, biases, outs, expected = [], [], [], []
    for c in range(n_cores):
        ns = rng.integers(1, 40, size=group)
        packs.append([quant.pack(rng.standard_normal((n, widths[c])).astype(np.float32), fmt) for n in ns])
        biases.append([rng.standard_normal(n).astype(np.float32) if with_bias else None for n in ns])
        outs.append([np.full((rows, n), np.nan, np.float32) for n in ns])
        want = [np.full((m, n), np.nan, np.float32) for n in ns]
        quant.linear_group(xs[c][:m], packs[c], biases[c], want)
        expected.append(want)
    run = cores.bind_linear(xs, packs, biases, outs)
    assert run is not None
    run(m)
    for c in range(n_cores):
        for p, b, out, want in zip(packs[c], biases[c], outs[c], expected[c], strict=True):
            assert out.shape == (rows, want.shape[1]) and out.dtype == np.float32
            np.testing.assert_array_equal(out[:m], want)
            assert np.isnan(out[m:]).all()  # rows past m untouched
            decoded = quant.unpack(p)
            ref = reference.linear(xs[c][:m], decoded, b)
            magnitude = np.abs(xs[c][:m]).astype(np.float64) @ np.abs(decoded).T.astype(np.float64)
            bound = 4 * (widths[c] + 8) * U32 * (magnitude + (0 if b is None else np.abs(b))) + 1e-30
            assert np.all(np.abs(out[:m] - ref) <= bound)


def test_formats_it_does_not_run_mismatched_widths_and_strided_arrays_are_left_to_the_per_core_kernels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    w = rng.standard_normal((4, 32)).astype(np.float32)
    out = np.zeros((2, 4), np.float32)
    assert cores.bind_linear([x], [[quant.pack(w, "bf16")]], [[None]], [[out]]) is None
    assert (
        cores.bind_linear([x], [[quant.pack(w, "fp32"), quant.pack(w, "q8_0")]], [[None, None]], [[out, out]]) is None
    )
    mismatched = [x, rng.standard_normal((2, 30)).astype(np.float32)]
    wrong = [[quant.pack(w, "q4_1")], [quant.pack(w, "q4_1")]]  # core 1's weight is wider than its input
    assert cores.bind_linear(mismatched, wrong, [[None], [None]], [[out], [out.copy()]]) is None
    strided = np.zeros((2, 8), np.float32)[:, ::2]
    assert cores.bind_linear([x], [[quant.pack(w, "q4_1")]], [[None]], [[strided]]) is None
    with pytest.raises(ValueError, match="C-contiguous"):
        Table().add(strided)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["fp32", "q4_0", "q4_1", "q8_0"]),
    st.integers(2, 6),
    st.integers(1, 3),
    st.sampled_from([1, 2, 5]),
    st.integers(1, 80),
    st.sampled_from(["same", "one_bit", "negative_zero"]),
    seeds,
)
def test_weights_several_cores_hold_give_each_core_its_own_products(fmt, n_cores, held, m, k, inputs, seed):
    """As key/value heads replicated over cores: core c holds core c % held's weights (the
    same bytes). A replica is computed once and copied only where the two cores' input rows
    have the same bits; otherwise (one bit of one row, or -0.0 for 0.0) each core computes
    its own. Either way every core gets what the per-core kernel gives it."""
    rng = np.random.default_rng(seed)
    rows = m + 1
    base = rng.standard_normal((rows, k)).astype(np.float32)
    base[0, 0] = 0.0
    xs = [base.copy() for _ in range(n_cores)]
    if inputs != "same":
        r = int(rng.integers(0, m))
        j = 0 if inputs == "negative_zero" else int(rng.integers(0, k))
        changed = xs[n_cores - 1]
        if inputs == "negative_zero":
            changed[0, 0] = -0.0
        else:
            changed[r, j : j + 1].view(np.uint32)[0] ^= 1
    own = [
        [quant.pack(rng.standard_normal((int(n), k)).astype(np.float32), fmt) for n in rng.integers(1, 30, size=2)]
        for _ in range(held)
    ]
    bias = [[rng.standard_normal(p.shape[0]).astype(np.float32) for p in ps] for ps in own]
    packs = [
        [quant.Packed(p.fmt, p.shape, {a: v.copy() for a, v in p.arrays.items()}) for p in own[c % held]]
        for c in range(n_cores)
    ]
    biases = [[b.copy() for b in bias[c % held]] for c in range(n_cores)]
    outs = [[np.full((rows, p.shape[0]), np.nan, np.float32) for p in ps] for ps in packs]
    run = cores.bind_linear(xs, packs, biases, outs)
    run(m)
    for c in range(n_cores):
        want = [np.empty((m, p.shape[0]), np.float32) for p in packs[c]]
        quant.linear_group(xs[c][:m], packs[c], biases[c], want)
        for out, w in zip(outs[c], want, strict=True):
            np.testing.assert_array_equal(out[:m], w)
            assert np.isnan(out[m:]).all()


def test_a_replica_is_copied_not_recomputed_when_its_inputs_agree_and_recomputed_when_they_do_not():
    """Checked by changing the replica's weight after binding (the runtime never does): with
    equal inputs its outputs are still its source's, with different inputs they are its own."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    packs = [[quant.pack(w, "q4_1")], [quant.pack(w, "q4_1")]]
    xs, outs = [x, x.copy()], [[np.zeros((2, 8), np.float32)], [np.zeros((2, 8), np.float32)]]
    run = cores.bind_linear(xs, packs, [[None], [None]], outs)
    packs[1][0].arrays["qs"][:] ^= 0x11  # every code of the replica's weight changed
    run(2)
    np.testing.assert_array_equal(outs[1][0], outs[0][0])
    xs[1][1, 3] += 1.0
    run(2)
    own = np.empty((2, 8), np.float32)
    quant.linear_group(xs[1], packs[1], [None], [own])
    np.testing.assert_array_equal(outs[1][0], own)
    assert not np.array_equal(outs[1][0], outs[0][0])


def test_replica_sources_are_the_first_earlier_entry_of_the_same_bytes_and_width():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    tail = a.copy()
    tail[3, 7] = np.nextafter(tail[3, 7], np.inf)  # the same first row, one bit apart at the end
    entries = [(8, (a,)), (8, (b,)), (8, (a.copy(),)), (9, (a.copy(),)), (8, (tail,)), (8, (b.copy(),)), (8, (a,))]
    assert replicas.sources(entries) == [-1, -1, 0, -1, -1, 1, 0]
    assert replicas.sources([(8, (np.zeros((0, 8), np.float32),)), (8, (np.zeros((0, 8), np.float32),))]) == [-1, 0]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 70),
    st.booleans(),
    st.sampled_from(["own", "replicated", "one_core_differs"]),
    st.booleans(),
    seeds,
)
def test_add_norm_and_swiglu_on_every_core_equal_the_per_core_kernels(n_cores, m, k, layer, stream, in_place, seed):
    """`stream`: each core its own inputs and norm weights; or, as the residual stream of a
    tensor-parallel model, the same on every core (a core then copies an earlier core's
    results, replicas.py), with one bit of the last core's inputs changed or not."""
    rng = np.random.default_rng(seed)
    rows = m + 1

    def arrays(width=k):
        return [rng.standard_normal((rows, width)).astype(np.float32) for _ in range(n_cores)]

    a_s, b_s, ws = arrays(), arrays(), [rng.standard_normal(k).astype(np.float32) for _ in range(n_cores)]
    bs = [rng.standard_normal(k).astype(np.float32) if layer else None for _ in range(n_cores)]
    if stream != "own":
        a_s, b_s = [a_s[0].copy() for _ in a_s], [b_s[0].copy() for _ in b_s]
        ws, bs = [ws[0].copy() for _ in ws], [None if b is None else bs[0].copy() for b in bs]
        if stream == "one_core_differs":
            b_s[-1][int(rng.integers(0, m)), int(rng.integers(0, k)) : None].view(np.uint32)[0] ^= 1
    inputs = [(a.copy(), b.copy()) for a, b in zip(a_s, b_s, strict=True)]
    sums, outs = a_s if in_place else arrays(), arrays()  # in place: the sum written over a
    cores.bind_add_norm(a_s, b_s, sums, ws, bs, outs, 1e-5)(m)
    for (a, b), s, w, bias, out in zip(inputs, sums, ws, bs, outs, strict=True):
        want_s, want = np.empty((m, k), np.float32), np.empty((m, k), np.float32)
        norms.add_norm(a[:m], b[:m], want_s, w, bias, 1e-5, want)
        np.testing.assert_array_equal(s[:m], want_s)
        np.testing.assert_array_equal(out[:m], want)
        np.testing.assert_array_equal(s[:m], (a[:m].astype(np.float64) + b[:m]).astype(np.float32))

    widths = [k + c for c in range(n_cores)]  # an uneven split: each core its own width
    gates, ups, outs = ([rng.standard_normal((rows, w)).astype(np.float32) for w in widths] for _ in range(3))
    untouched = [o[m:].copy() for o in outs]
    cores.bind_silu_mul(gates, ups, outs)(m)
    for g, u, o, rest in zip(gates, ups, outs, untouched, strict=True):
        want = np.empty((m, g.shape[1]), np.float32)
        activations.silu_mul(g[:m], u[:m], want)
        np.testing.assert_array_equal(o[:m], want)
        np.testing.assert_array_equal(o[m:], rest)
        g64 = g[:m].astype(np.float64)
        np.testing.assert_allclose(o[:m], g64 / (1 + np.exp(-g64)) * u[:m], rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4), st.sampled_from([(4, 2), (2, 2), (3, 1)]), seeds)
def test_rope_and_attention_on_every_core_equal_the_per_core_kernels(n_cores, batch, tokens, heads, seed):
    from tilesim.device.kernels import attention as attn
    from tilesim.device.kernels import rotary

    rng = np.random.default_rng(seed)
    (hq, hkv), d, slots, positions = heads, 8, batch + 1, 16
    m = batch * tokens
    start = rng.integers(0, positions - tokens, size=batch).astype(np.int64)
    valid = np.full(batch, tokens, np.int64)
    valid[0] = max(1, tokens - 1)  # a padded row
    rows = np.concatenate([s + np.arange(tokens) for s in start]).astype(np.int64)
    cos, sin = rotary.rope_tables(positions, rotary.rope_inv_freq(d, 10000.0))

    def per_core(n):
        return [rng.standard_normal((m + 1, n * d)).astype(np.float32) for _ in range(n_cores)]

    qs, ks, vs = per_core(hq), per_core(hkv), per_core(hkv)
    caches = [[rng.standard_normal((slots, hkv, positions, d)).astype(np.float32) for _ in range(2)] for _ in qs]
    slopes = [rng.standard_normal(hq).astype(np.float32) for _ in qs]
    outs = [np.full((m + 1, hq * d), np.nan, np.float32) for _ in qs]
    copies = [[a.copy() for a in (q, k, v, kc, vc)] for q, k, v, (kc, vc) in zip(qs, ks, vs, caches, strict=True)]

    cores.bind_rope(qs, ks, d, cos, sin, d, "neox")(m, rows)
    run = cores.bind_attention(qs, ks, vs, *zip(*caches, strict=True), outs, slopes, d, 0.35, 0)
    run(batch, tokens, start, valid)
    for c, (q, k, v, kc, vc) in enumerate(copies):
        for x in (q, k):
            rotary.rope(x[:m].reshape(m, -1, d), rows, cos, sin, d, "neox")
        np.testing.assert_array_equal(qs[c], q)
        attn.kv_write(k[:m].reshape(batch, tokens, hkv, d), v[:m].reshape(batch, tokens, hkv, d), kc, vc, start, valid)
        np.testing.assert_array_equal(caches[c][0], kc)
        np.testing.assert_array_equal(caches[c][1], vc)
        want = np.empty((batch, tokens, hq, d), np.float32)
        attn.attention(q[:m].reshape(batch, tokens, hq, d), kc, vc, start, valid, 0.35, want, 0, slopes[c])
        np.testing.assert_array_equal(outs[c][:m].reshape(batch, tokens, hq, d), want)
        assert np.isnan(outs[c][m:]).all()
        # against float64: the first sequence's last valid query row, head 0
        t, b = valid[0] - 1, 0
        keys = kc[b, 0, : start[b] + t + 1].astype(np.float64)
        scores = keys @ q[t, :d].astype(np.float64) * 0.35 + slopes[c][0] * np.arange(len(keys))
        p = np.exp(scores - scores.max())
        ref = (p / p.sum()) @ vc[b, 0, : len(keys)].astype(np.float64)
        np.testing.assert_allclose(outs[c][t, :d], ref, rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 70), st.booleans(), seeds)
def test_the_steps_ends_on_every_core_equal_the_per_core_code(n_cores, m, k, layer, seed):
    """Embedding lookup, final norm and the rows kept for the logits."""
    from tilesim.device.kernels import elementwise

    rng = np.random.default_rng(seed)
    rows, vocab = m + 2, 3 * n_cores
    tables = [rng.standard_normal((3, k)).astype(np.float32) for _ in range(n_cores)]
    ids = rng.integers(0, vocab, size=m)
    outs = [np.full((rows, k), np.nan, np.float32) for _ in range(n_cores)]
    cores.bind_embed(tables, [3 * c for c in range(n_cores)], outs)(ids)
    for c in range(n_cores):
        want = np.full((m, k), np.nan, np.float32)
        elementwise.embed(ids, tables[c], 3 * c, want)
        assert outs[c][:m].tobytes() == want.tobytes()
        assert np.isnan(outs[c][m:]).all()  # rows past the step's are left alone
    assert np.array_equal(sum(o[:m].astype(np.float64) for o in outs), np.concatenate(tables)[ids])

    xs = [rng.standard_normal((rows, k)).astype(np.float32) for _ in range(n_cores)]
    ws = [rng.standard_normal(k).astype(np.float32) for _ in range(n_cores)]
    bs = [rng.standard_normal(k).astype(np.float32) if layer else None for _ in range(n_cores)]
    outs = [np.full((rows, k), np.nan, np.float32) for _ in range(n_cores)]
    cores.bind_norm(xs, ws, bs, outs, 1e-5)(m)
    for c in range(n_cores):
        want = np.empty((m, k), np.float32)
        if layer:
            norms.layer_norm(xs[c][:m], ws[c], bs[c], 1e-5, want)
        else:
            norms.rms_norm(xs[c][:m], ws[c], 1e-5, want)
        assert outs[c][:m].tobytes() == want.tobytes()
        assert np.isnan(outs[c][m:]).all()

    picked = rng.integers(0, rows, size=m)
    outs = [np.full((m, k), np.nan, np.float32) for _ in range(n_cores)]
    cores.bind_take_rows(xs, outs)(picked)
    assert all(np.array_equal(o, x[picked]) for o, x in zip(outs, xs, strict=True))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.sampled_from([1, 2, 8, 16]), st.booleans(), seeds)
def test_head_norms_on_every_core_equal_the_per_core_kernel(n_cores, m, d, in_place, seed):
    """Qwen3's q_norm and k_norm; cores may hold different numbers of heads (padded heads)."""
    rng = np.random.default_rng(seed)
    rows = m + 2
    xs = [rng.standard_normal((rows, d * int(rng.integers(1, 5)))).astype(np.float32) for _ in range(n_cores)]
    ws = [rng.standard_normal(d).astype(np.float32) for _ in range(n_cores)]
    wants = []
    for x, w in zip(xs, ws, strict=True):
        wants.append(norms.head_rms_norm(x[:m], w, 1e-6, np.empty((m, x.shape[1]), np.float32)))
    outs = xs if in_place else [np.full(x.shape, np.nan, np.float32) for x in xs]
    before = [x.copy() for x in xs]
    cores.bind_head_norm(xs, ws, outs, 1e-6)(m)
    for c in range(n_cores):
        assert outs[c][:m].tobytes() == wants[c].tobytes()
        assert outs[c][m:].tobytes() == (before[c][m:] if in_place else np.full_like(before[c][m:], np.nan)).tobytes()
    assert cores.bind_head_norm([np.zeros((2, 6), np.float32)], [np.ones(4, np.float32)], [np.zeros((2, 6))], 0) is None


def test_the_steps_ends_refuse_rows_outside_their_arrays():
    xs, outs = [np.zeros((3, 4), np.float32)], [np.zeros((2, 4), np.float32)]
    take = cores.bind_take_rows(xs, outs)
    with pytest.raises(IndexError):
        take(np.array([0, 3]))  # no row 3
    with pytest.raises(IndexError):
        take(np.array([0, 1, 2]))  # three rows into two
    embed = cores.bind_embed([np.zeros((5, 4), np.float32)], [0], outs)
    with pytest.raises(IndexError):
        embed(np.array([1, 2, 3]))
