"""Speculative decoding. Greedy is lossless: the target's tokens alone (and transformers'),
whatever the draft and k. The sampling rule is tested for the target's distribution on a
small vocabulary: N = 40,000 rounds, chi-square at alpha = 0.001 on the first and the second
emitted token. Power: a first-token distribution off by a total variation of 0.02 (moved
between the two likeliest tokens) has noncentrality 40,000 x (0.02²/0.30 + 0.02²/0.25) = 117,
so the test rejects it with probability above 0.999 (noncentral chi-square, 5 degrees of
freedom); a wrong rule (no residual on rejection: a total variation of 0.15) is checked to be
rejected by far. Times come from each model's timer."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import tilesim
from tilesim.errors import GenerationError
from tilesim.runtime.speculative import accept, speculative_generate

PROMPT = [5, 17, 42, 8, 99, 3, 61]
CRITICAL_DF5_001 = 20.515  # chi-square, 5 degrees of freedom, upper 0.001 point


@pytest.fixture(scope="module")
def models(tiny_model):
    target = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=3), tp=3, max_context=96)
    other = tilesim.load(str(tiny_model("mistral")), device=tilesim.Device("tiny", cores=1), tp=1, max_context=96)
    same = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=1), tp=1, max_context=96)
    near = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=1), tp=1, max_context=96,
                        dtype="int4")  # fmt: skip
    return target, {"other": other, "same": same, "int4": near}


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("draft", ["other", "same", "int4"])
def test_greedy_speculation_gives_the_targets_own_tokens(models, tiny_model, greedy_rule, draft, k):
    target, drafts = models
    alone = target.generate([PROMPT], max_new_tokens=30, eos_token_id=None).tokens[0].tolist()
    out = speculative_generate(target, drafts[draft], PROMPT, 30, k=k, eos_token_id=None)
    assert out.tokens.tolist() == alone
    reference = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        gen = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=30,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    greedy_rule(out.tokens, gen.sequences[0, len(PROMPT):].tolist(), [s[0].numpy() for s in gen.logits], 1e-4,
                f"speculative {draft} k={k}")  # fmt: skip
    rate = out.report["acceptance_rate"]
    if draft == "same":
        # each round proposes at most the tokens still wanted after the target's own: 29 after
        # the first, in rounds of k + 1 until one is left, which the target makes alone
        assert rate == 1.0 and out.report["rounds"] == -(-28 // (k + 1))
    if draft == "other":
        assert rate < 0.5


def test_a_draft_equal_to_the_target_is_always_accepted_when_sampling(models):
    target, drafts = models
    out = speculative_generate(target, drafts["same"], PROMPT, 30, k=4, temperature=1.0, seed=3, eos_token_id=None)
    assert out.report["acceptance_rate"] == 1.0, "p == q at every position: the same logits in another step shape"
    again = speculative_generate(target, drafts["same"], PROMPT, 30, k=4, temperature=1.0, seed=3, eos_token_id=None)
    assert again.tokens.tolist() == out.tokens.tolist()


def _rounds(rule, p, q, n, seed):
    rng = np.random.default_rng(seed)
    k = q.shape[0]
    firsts, seconds = [], []
    for _ in range(n):
        proposals = np.array([rng.choice(q.shape[1], p=q[i]) for i in range(k)])
        out = rule(p, q, proposals, rng)
        firsts.append(out[0])
        if out[0] == proposals[0] and len(out) > 1:
            seconds.append(out[1])
    return np.array(firsts), np.array(seconds)


def _chi2(samples, p):
    counts = np.bincount(samples, minlength=len(p))
    expected = len(samples) * p
    return float(np.sum((counts - expected) ** 2 / expected))


def _no_residual(p, q, proposals, rng):
    """A wrong rule: on rejection, draw from p instead of max(0, p - q)."""
    out = []
    for i, token in enumerate(proposals):
        if rng.random() < min(1.0, p[i, token] / q[i, token]):
            out.append(int(token))
            continue
        out.append(int(rng.choice(p.shape[1], p=p[i])))
        return out
    out.append(int(rng.choice(p.shape[1], p=p[-1])))
    return out


def test_the_acceptance_rule_samples_the_targets_distribution():
    p = np.array([[0.30, 0.25, 0.20, 0.10, 0.10, 0.05], [0.05, 0.05, 0.10, 0.20, 0.25, 0.35],
                  [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]])  # fmt: skip
    q = np.array([[0.05, 0.10, 0.15, 0.20, 0.20, 0.30], [0.30, 0.25, 0.20, 0.10, 0.10, 0.05]])
    n = 40_000
    firsts, seconds = _rounds(accept, p, q, n, seed=0)
    assert _chi2(firsts, p[0]) < CRITICAL_DF5_001
    assert len(seconds) > 5000 and _chi2(seconds, p[1]) < CRITICAL_DF5_001
    wrong, _ = _rounds(_no_residual, p, q, n, seed=0)
    assert _chi2(wrong, p[0]) > 10 * CRITICAL_DF5_001, "the test tells a wrong rule apart"


def test_times_come_from_each_models_steps(models):
    target, drafts = models
    k = 3
    out = speculative_generate(target, drafts["same"], PROMPT, 13, k=k, eos_token_id=None)
    r = out.report
    b = target.buckets
    prefill = target.timer.time(b.prefill_shape(1, len(PROMPT), "argmax")).latency
    # a check is a chunk after the cached positions: it pays no request setup (chunk_shape)
    checks = [
        target.timer.time(b.chunk_shape(1, k + 1, len(PROMPT) + i * (k + 1), "all")).latency for i in range(r["rounds"])
    ]
    assert r["target_s"] == pytest.approx(prefill + sum(checks), rel=1e-12)
    assert r["target_steps"] == 1 + r["rounds"] == 4
    assert r["tpot_s"] == pytest.approx((r["sim_total_s"] - r["ttft_s"]) / 12)


def test_a_prompt_longer_than_the_prefill_buckets_is_prefilled_in_windows(tiny_model):
    """As `generate`: the 7-token prompt in 4-token windows, the target's own tokens."""
    folder = str(tiny_model("llama"))
    target = tilesim.load(folder, device=tilesim.Device("tiny", cores=3), tp=3, max_context=96, prefill_buckets=[4])
    draft = tilesim.load(folder, device=tilesim.Device("tiny", cores=1), tp=1, max_context=96, prefill_buckets=[4])
    alone = target.generate([PROMPT], max_new_tokens=12, eos_token_id=None).tokens[0].tolist()
    out = speculative_generate(target, draft, PROMPT, 12, k=3, eos_token_id=None)
    assert out.tokens.tolist() == alone
    assert out.report["target_steps"] == 2 + out.report["rounds"]  # two prompt windows, then the checks


def test_a_request_that_fills_the_context_runs_its_last_rounds_with_fewer_proposals(models):
    """7 prompt + 89 new tokens fill the 96 positions: the last rounds propose no more than
    is still wanted (they were refused before, needing k positions beyond)."""
    target, drafts = models
    alone = target.generate([PROMPT], max_new_tokens=89, eos_token_id=None).tokens[0].tolist()
    out = speculative_generate(target, drafts["same"], PROMPT, 89, k=4, eos_token_id=None)
    assert out.tokens.tolist() == alone
    assert [proposed for proposed, _ in out.rounds][-2:] == [4, 2]  # 88 = 17 x (4 + 1) + (2 + 1)


def test_mismatched_models_and_bad_k_are_refused(models, tiny_model):
    target, drafts = models
    gpt2 = tilesim.load(str(tiny_model("llama_gguf")), device=tilesim.Device("tiny", cores=1), tp=1, max_context=96)
    with pytest.raises(GenerationError, match="vocabulary"):
        speculative_generate(target, gpt2, PROMPT, 8)
    with pytest.raises(GenerationError, match="k"):
        speculative_generate(target, drafts["same"], PROMPT, 8, k=0)
    with pytest.raises(GenerationError, match="max_context"):
        speculative_generate(target, drafts["same"], PROMPT, 90, k=4)  # 7 + 90 positions of 96
    with pytest.raises(GenerationError, match=r"draft=None must be a model from tilesim\.load"):
        speculative_generate(target, None, PROMPT, 8)
    with pytest.raises(GenerationError, match="the draft must be a model of its own"):
        speculative_generate(target, target, PROMPT, 8)  # one KV cache cannot hold both (an IndexError before)
    with pytest.raises(GenerationError, match="max_new_tokens=0 must be at least 1"):
        speculative_generate(target, drafts["same"], PROMPT, 0)
    # as generate checks them (a ValueError from int('x') before; an id beyond the vocabulary never stopped)
    with pytest.raises(GenerationError, match="eos_token_id='x' must be a token id"):
        speculative_generate(target, drafts["same"], PROMPT, 8, eos_token_id="x")
    vocab = target.graph.vocab_size
    with pytest.raises(GenerationError, match=f"eos_token_id {vocab} is outside the vocabulary of {vocab} ids"):
        speculative_generate(target, drafts["same"], PROMPT, 8, eos_token_id=[2, vocab])
