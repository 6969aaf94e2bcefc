"""The sampler's warping against transformers' own logits processors, and its seeding."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tilesim.errors import GenerationError
from tilesim.runtime.sampling import SamplingParams, choose, warp


def transformers_warp(logits, temperature, top_k, top_p):
    scores = torch.tensor(logits)
    if temperature is not None and temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None and top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.numpy()


@given(
    st.integers(0, 2**16),
    st.sampled_from([None, 0.5, 1.0, 1.7]),
    st.sampled_from([None, 1, 5, 40]),
    st.sampled_from([None, 0.3, 0.9, 1.0]),
)
def test_temperature_top_k_top_p_remove_what_transformers_removes(seed, temperature, top_k, top_p):
    logits = np.random.default_rng(seed).standard_normal((3, 50)).astype(np.float32) * 3
    ours = warp(logits, SamplingParams(temperature, top_k, top_p))
    theirs = transformers_warp(logits, temperature, top_k, top_p)
    assert np.array_equal(np.isinf(ours), np.isinf(theirs))
    finite = ~np.isinf(theirs)
    assert np.allclose(ours[finite], theirs[finite], rtol=1e-6)


def test_greedy_is_the_first_largest_logit():
    logits = np.array([[0.0, 2.0, 2.0, 1.0]], np.float32)
    assert choose(logits, SamplingParams(), np.random.default_rng(0)).tolist() == [1]


def test_draws_follow_the_seed_and_stay_inside_top_k():
    logits = np.random.default_rng(1).standard_normal((4, 100)).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_k=3, seed=5)
    a = choose(logits, params, np.random.default_rng(5))
    b = choose(logits, params, np.random.default_rng(5))
    assert a.tolist() == b.tolist()
    allowed = np.argsort(-logits, axis=-1)[:, :3]
    assert all(a[i] in allowed[i] for i in range(4))


@pytest.mark.parametrize(
    ("kw", "message"), [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p")]
)
def test_bad_sampling_arguments(kw, message):
    with pytest.raises(GenerationError, match=message):
        SamplingParams(**kw)


@pytest.mark.parametrize("temperature", [1e-320, 1e-40, 1e-38])
def test_a_temperature_too_small_for_float32_draws_among_the_largest_logits(temperature):
    # logits / T overflows (or T is 0 in float32): the limit T -> 0 keeps the largest logits alike
    logits = np.array([[1.0, 30.0, 30.0, -2.0], [0.0, 0.5, -1.0, 20.0]], np.float32)
    params = SamplingParams(temperature=temperature, seed=3)
    with np.errstate(all="raise"):
        drawn = {tuple(choose(logits, params, np.random.default_rng(s)).tolist()) for s in range(40)}
    assert {d[0] for d in drawn} == {1, 2} and {d[1] for d in drawn} == {3}


def test_a_temperature_beyond_float32_draws_uniformly():
    logits = np.array([[5.0, -5.0, 0.0]], np.float32)
    scores = warp(logits, SamplingParams(temperature=1e308))
    assert np.array_equal(scores, np.zeros_like(scores))
