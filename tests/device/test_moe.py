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


@pytest.mark.parametrize(("rows", "expected"), [(1, 2.0), (2, 8 * (1 - 0.75**2)), (1000, 8.0)])
def test_the_cost_reads_the_experts_a_step_touches(rows, expected):
    e, k, h, i = 8, 2, 4096, 14336
    assert moe.touched(e, k, rows) == pytest.approx(expected, rel=1e-9)
    cost = moe.moe_cost(rows, h, i, e, k, weight_bytes_per_elem=2, router_bytes_per_elem=2, act_bytes=2)
    assert cost.flops == 2 * rows * e * h + 6 * rows * k * h * i
    assert cost.bytes["weights"] == pytest.approx(e * h * 2 + expected * 3 * h * i * 2)
    assert cost.bytes["activations"] == (2 * rows * h + 3 * rows * k * i) * 2
