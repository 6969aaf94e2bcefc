"""BLOOM's ALiBi slopes against the published formula (Press et al. 2022: for 2^k heads the
geometric series 2^(-8/n), 2^(-16/n), ...; other counts interleave the series of the next
power of two), and contexts past the trained length: allowed with a warning for ALiBi (as
for rotary positions), refused for learned absolute positions."""

import numpy as np
import pytest

import tilesim
from tilesim.errors import ConfigError
from tilesim.models.decoder import alibi_slopes


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16, 32, 64])
def test_slopes_of_a_power_of_two_are_a_geometric_series(heads):
    expected = 2.0 ** (-8.0 / heads * np.arange(1, heads + 1))
    assert np.allclose(alibi_slopes(heads), expected, rtol=1e-6)


@pytest.mark.parametrize("heads", [3, 6, 12, 112])  # BLOOM-176B has 112 heads
def test_other_head_counts_take_the_odd_terms_of_the_next_series(heads):
    n = 2 ** int(np.floor(np.log2(heads)))
    first = 2.0 ** (-8.0 / n * np.arange(1, n + 1))
    rest = 2.0 ** (-8.0 / (2 * n) * np.arange(1, 2 * n + 1))[0::2][: heads - n]
    assert np.allclose(alibi_slopes(heads), np.concatenate([first, rest]), rtol=1e-6)


def test_alibi_runs_past_its_trained_length_with_a_warning_and_learned_positions_do_not(tiny_model):
    bloom = str(tiny_model("bloom"))
    with pytest.warns(UserWarning, match="beyond the 2048 positions"):
        model = tilesim.load(bloom, device="tiny", tp=1, max_context=2100)
    assert model.max_context == 2100
    with pytest.raises(ConfigError, match="learned positions"):
        tilesim.load(str(tiny_model("gpt2")), device="tiny", tp=1, max_context=4096)


def test_the_named_bloom_config_has_its_published_size():
    model = tilesim.load("bloom-7b1", device="inf2", tp=8, timing_only=True, max_context=512)
    assert model.checkpoint.config.params == pytest.approx(7.069e9, rel=0.002)  # bigscience: 7,069,016,064
    assert model.generate([[0] * 64], max_new_tokens=2).report["ttft_s"] > 0


def test_the_named_mixtral_config_has_its_published_size_and_reads_two_experts_a_token():
    model = tilesim.load("mixtral-8x7b", device="trn1", tp=32, timing_only=True, max_context=512, dtype="bf16")
    assert model.checkpoint.config.params == pytest.approx(46.7e9, rel=0.01)  # Mistral AI: 46.7B total
    one = model.generate([[0] * 64], max_new_tokens=4).report["tpot_s"]["mean"]
    eight = model.generate([[0] * 64] * 8, max_new_tokens=4).report["tpot_s"]["mean"]
    assert eight > 1.5 * one, "a batch of 8 tokens touches most experts; one token reads two"
