"""The mixture-of-experts kernel against its float64 reference (fp32 and int8-stored experts),
Mixtral's routing, and its data-independent cost against the closed form."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilesim.device.kernels import moe, quant, reference


def _experts(rng, n, width, hidden, fmt):
    raw = [(rng.standard_normal((width, hidden)), rng.standard_normal((width, hidden)),
            rng.standard_normal((hidden, width))) for _ in range(n)]  # fmt: skip
    raw = [tuple(w.astype(np.float32) / np.sqrt(w.shape[1]) for w in triple) for triple in raw]
    packs = [tuple(quant.pack(w, fmt) for w in triple) for triple in raw]
    seen = [tuple(quant.unpack(p, np.arange(p.shape[0])) for p in triple) for triple in packs]  # what the kernel reads
    return packs, seen


@given(st.integers(1, 9), st.sampled_from([(4, 1), (4, 2), (8, 2), (3, 3)]), st.sampled_from(["fp32", "int8"]),
       st.integers(0, 2**31 - 1))  # fmt: skip
def test_the_experts_sum_the_routed_mlps_weighted(rows, shape, fmt, seed):
    n, k = shape
    rng = np.random.default_rng(seed)
    hidden, width = 64, 32
    x = rng.standard_normal((rows, hidden)).astype(np.float32)
    router = rng.standard_normal((n, hidden)).astype(np.float32)
    packs, seen = _experts(rng, n, width, hidden, fmt)
    idx, weights = moe.route(x @ router.T, k)
    out = moe.experts(x, idx, weights, packs, np.full((rows, hidden), np.nan, np.float32))
    ref = reference.moe(x, router, *zip(*seen, strict=True), k)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_routing_takes_the_k_most_probable_experts_renormalised():
    logits = np.array([[0.0, 2.0, 1.0, -1.0], [3.0, 3.5, -2.0, 0.5]], np.float32)
    idx, w = moe.route(logits, 2)
    assert idx.tolist() == [[1, 2], [1, 0]]
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    top = np.take_along_axis(p, idx, -1)
    assert np.allclose(w, top / top.sum(-1, keepdims=True), rtol=1e-6) and np.allclose(w.sum(-1), 1.0)
    kept_idx, kept = moe.route(logits, 2, renormalize=False)  # Qwen3-MoE without norm_topk_prob
    assert kept_idx.tolist() == idx.tolist() and np.allclose(kept, top, rtol=1e-6) and (kept.sum(-1) < 1).all()


@pytest.mark.parametrize(("rows", "expected"), [(1, 2.0), (2, 8 * (1 - 0.75**2)), (1000, 8.0)])
def test_the_cost_reads_the_experts_a_step_touches(rows, expected):
    e, k, h, i = 8, 2, 4096, 14336
    assert moe.touched(e, k, rows) == pytest.approx(expected, rel=1e-9)
    cost = moe.moe_cost(rows, h, i, e, k, weight_bytes_per_elem=2, router_bytes_per_elem=2, act_bytes=2)
    assert cost.flops == 2 * rows * e * h + 6 * rows * k * h * i
    assert cost.bytes["weights"] == pytest.approx(e * h * 2 + expected * 3 * h * i * 2)
    assert cost.bytes["activations"] == (2 * rows * h + 3 * rows * k * i) * 2


@given(st.integers(1, 11), st.sampled_from([(4, 2, 2), (4, 2, 4), (4, 1, 8), (8, 2, 4), (2, 2, 4)]),
       st.integers(0, 2**31 - 1))  # fmt: skip
def test_expert_parallel_exchange_sums_the_routed_mlps_weighted(rows, shape, seed):
    """Rows split over cores, packed per destination, exchanged (the all-to-all done here by
    hand: block d of every core to core d), run by the cores holding each expert (or a width
    slice of it), sent back and combined: the float64 reference's sparse MLP."""
    n, k, cores = shape
    rng = np.random.default_rng(seed)
    hidden, width = 16, 12
    x = rng.standard_normal((rows, hidden)).astype(np.float32)
    router = rng.standard_normal((n, hidden)).astype(np.float32)
    packs, seen = _experts(rng, n, width, hidden, "fp32")
    if n >= cores:  # whole experts: n / cores on each core
        owners = [[e // (n // cores)] for e in range(n)]
        slices = {(e, c): packs[e] for e in range(n) for c in owners[e]}
    else:  # each expert's width over cores / n cores: gate and up by rows, down by columns
        group = cores // n
        owners = [list(range(e * group, (e + 1) * group)) for e in range(n)]
        cut = np.linspace(0, width, group + 1).astype(int)
        slices = {}
        for e, (g, u, d) in enumerate(seen):
            for j, c in enumerate(owners[e]):
                lo, hi = cut[j], cut[j + 1]
                slices[(e, c)] = (quant.pack(g[lo:hi], "fp32"), quant.pack(u[lo:hi], "fp32"),
                                  quant.pack(np.ascontiguousarray(d[:, lo:hi]), "fp32"))  # fmt: skip
    per = max(min(k, sum(c in o for o in owners)) for c in range(cores))
    rb = -(-rows // cores)
    cap = rb * per
    sends = [np.full((cores, cap, hidden + 2), np.nan, np.float32) for _ in range(cores)]
    sent = []
    for c in range(cores):
        lo, hi = min(c * rb, rows), min((c + 1) * rb, rows)
        idx, weights = moe.route(x[lo:hi] @ router.T, k)
        sent.append(moe.dispatch(x[lo:hi], idx, weights, owners, sends[c]))
    recvs = [np.stack([sends[src][d] for src in range(cores)]) for d in range(cores)]
    dones = [np.full((cores, cap, hidden), np.nan, np.float32) for _ in range(cores)]
    for d in range(cores):
        held = {e: slices[(e, d)] for e in range(n) if d in owners[e]}
        moe.expert_blocks(recvs[d], held, dones[d])
    out = np.zeros((rows, hidden), np.float32)
    for c in range(cores):
        back = np.stack([dones[d][c] for d in range(cores)])
        lo, hi = min(c * rb, rows), min((c + 1) * rb, rows)
        own = np.full((hi - lo, hidden), np.nan, np.float32)
        out[lo:hi] = moe.combine(back, sent[c], own)
    ref = reference.moe(x, router, *zip(*seen, strict=True), k)
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_the_expert_parallel_costs_against_the_closed_form():
    e, k, h, i = 8, 2, 4096, 14336
    part = moe.experts_cost(3.0, 2.0, h, i, weight_bytes_per_elem=2, act_bytes=2)
    assert part.flops == 6 * 3 * h * i and part.bytes["weights"] == 2 * 3 * h * i * 2
    assert part.bytes["activations"] == 3 * 3 * i * 2 and part.shape == (2, i, h)
    route = moe.dispatch_cost(5, h, e, k, router_bytes_per_elem=2, act_bytes=2)
    assert route.flops == 2 * 5 * e * h and route.bytes["weights"] == e * h * 2
    assert route.bytes["activations"] == (5 * h + 5 * k * (h + 2)) * 2
    back = moe.combine_cost(5, h, k, act_bytes=2)
    assert back.flops == 5 * k * h and back.bytes["activations"] == (5 * k * h + 5 * h) * 2
    assert moe.uniform_load(e, k, 4, 2) == pytest.approx((4 * k * 2 / e, moe.touched(e, k, 4) * 2 / e))
