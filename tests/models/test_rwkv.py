"""RWKV-4 beyond the shared transformers comparisons: the recurrence and token shift against
their float64 references (the WKV in its plain form, without the running maximum fp32 needs),
state carried across steps as one long step would, the state as its own class in the memory
report, and the named config's published size."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tilesim
from tilesim.device.kernels import recurrent, reference
from tilesim.runtime.memplan import aligned


@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_wkv_and_token_shift_against_float64(batch, tokens, channels, seed):
    rng = np.random.default_rng(seed)
    rows = batch * tokens
    k, v = rng.standard_normal((2, rows, channels)).astype(np.float32)
    decay, first = rng.standard_normal((2, channels)).astype(np.float32)
    start = rng.integers(0, 2, size=batch) * 7  # some sequences start here, others carry a state
    valid = rng.integers(1, tokens + 1, size=batch)
    # a state made by running `warm` tokens through the same recurrence first
    warm_k, warm_v = rng.standard_normal((2, batch, channels)).astype(np.float32)
    num, den = np.zeros((batch, channels), np.float32), np.zeros((batch, channels), np.float32)
    mx = np.full((batch, channels), recurrent.START_MAX, np.float32)
    recurrent.wkv(warm_k, warm_v, decay, first, num, den, mx, np.zeros(batch, np.int64), np.ones(batch, np.int64), 1,
                  np.empty((batch, channels), np.float32))  # fmt: skip
    plain = (num * np.exp(mx.astype(np.float64)), den * np.exp(mx.astype(np.float64)))  # a, b without the maximum
    out = np.full((rows, channels), np.nan, np.float32)
    recurrent.wkv(k, v, decay, first, num, den, mx, start, valid, tokens, out)
    ref, (a, b) = reference.wkv(k, v, decay, first, plain, start, valid, tokens)
    for s in range(batch):
        got, want = out[s * tokens : s * tokens + valid[s]], ref[s * tokens : s * tokens + valid[s]]
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))
    assert np.allclose(num * np.exp(mx.astype(np.float64)), a, rtol=1e-4, atol=1e-30)
    assert np.allclose(den * np.exp(mx.astype(np.float64)), b, rtol=1e-4, atol=1e-30)
    x = rng.standard_normal((rows, channels)).astype(np.float32)
    state = rng.standard_normal((batch, channels)).astype(np.float32)
    want, new_state = reference.token_shift(x, state, start, valid, tokens)
    got = recurrent.shift(x, state, start, valid, tokens, np.full_like(x, np.nan))
    assert np.array_equal(got, want.astype(np.float32)) and np.array_equal(state, new_state.astype(np.float32))


def test_a_prompt_fed_in_pieces_gives_the_tokens_of_one_prefill(tiny_model):
    """Chunked prefill carries the state across steps: the same logits as the whole prompt at once."""
    from tilesim.serving import Request, serve

    model = tilesim.load(str(tiny_model("rwkv")), device=tilesim.Device("tiny", cores=3), tp=3, max_context=64)
    prompt = tuple(range(3, 40))
    whole = model.generate([list(prompt)], max_new_tokens=8, eos_token_id=None).tokens[0].tolist()
    request = Request(0, 0.0, len(prompt), 8, prompt=prompt)
    pieces = serve(model, [request], scheduler="chunked", chunk_size=5, max_num_seqs=2, stop_at_eos=False)
    assert pieces.tokens()[0] == whole


def test_the_state_is_its_own_class_in_the_memory_report(tiny_model):
    tp, batch = 3, 2
    model = tilesim.load(str(tiny_model("rwkv")), device=tilesim.Device("tiny", cores=tp), tp=tp, max_context=64)
    out = model.generate([[5, 6, 7]] * batch, max_new_tokens=2)
    core0 = out.report["memory"]["per_core"][0]
    hidden, channels, layers = 48, 16, 4  # 48 channels over 3 cores
    per_layer = 2 * aligned(batch * hidden * 4) + 3 * aligned(batch * channels * 4)
    assert core0["recurrent_state"] == layers * per_layer and "kv_cache" not in core0
    assert "recurrent_state" not in out.report["memory"]["reserved"]


def test_the_named_rwkv_config_has_its_published_size():
    model = tilesim.load("rwkv-4-169m-pile", device="ipu-gc200", tp=1, timing_only=True, max_context=1024)
    assert model.checkpoint.config.params == pytest.approx(169e6, rel=0.01)
    report = model.generate([[0] * 64], max_new_tokens=4).report
    assert report["steps"] == 4, "timing-only makes no tokens, so its end-of-sequence id (0 here) never stops it"
    assert report["tpot_s"]["mean"] > 0
