"""Compiled buckets (transformers-neuronx's context_length_estimate and n_positions): a step
runs in the smallest bucket that holds it, the report and trace say which, every bucket's
program holds device memory, a prompt longer than the largest prefill bucket runs in windows
of it (with transformers' tokens), and runs beyond the largest decode bucket are refused."""

import json

import numpy as np
import pytest

import tilesim
from tilesim.errors import ConfigError, GenerationError
from tilesim.profiler.chrome import chrome_events
from tilesim.runtime.buckets import Buckets
from tilesim.runtime.timing import StepShape
from tilesim.serving import Request, serve
from tilesim.units import parse_size


def test_the_default_buckets_are_powers_of_two_up_to_the_context():
    b = Buckets.make(1000)
    assert b.prefill == (16, 32, 64, 128, 256, 512, 1000) and b.decode == (128, 256, 512, 1000)
    assert Buckets.make(8).prefill == (8,) and Buckets.make(8).decode == (8,)
    for n in (1, 16, 17, 500, 512, 513, 1000):
        assert b.prefill_for(n) == min(1000, max(16, 1 << (n - 1).bit_length()))


def test_steps_run_in_the_smallest_bucket_that_holds_them(tmp_path):
    model = tilesim.load("llama-2-7b", device="trn1", tp=8, timing_only=True, max_context=1024,
                         prefill_buckets=[512, 128], decode_buckets=[150, 300])  # fmt: skip
    prompt, new = 129, 100
    out = model.generate([[0] * prompt], max_new_tokens=new, eos_token_id=None)
    # decode steps see contexts prompt+1 .. prompt+new-1: up to 150 in the first bucket, the rest in 300
    assert out.report["buckets"]["steps"] == {"prefill 512": 1, "decode 150": 150 - prompt, "decode 300": 228 - 150}
    assert out.report["ttft_s"] == model.timer.time(model.buckets.prefill_shape(1, 512)).latency
    steps = {e["name"]: e["args"]["bucket"] for e in chrome_events(out.trace) if e.get("cat") == "step"}
    assert steps["prefill"] == 512 and steps["decode 21"] == 150 and steps["decode 22"] == 300
    reserved = out.report["memory"]["reserved"]
    assert reserved["compiled_programs"] == 4 * parse_size("4MiB"), "four programs of the preset's program_bytes"
    json.dumps(out.report)


def test_more_buckets_hold_more_memory():
    few = tilesim.load("llama-2-7b", device="trn1", tp=8, timing_only=True, max_context=2048, prefill_buckets=[2048],
                       decode_buckets=[2048])  # fmt: skip
    many = tilesim.load("llama-2-7b", device="trn1", tp=8, timing_only=True, max_context=2048)
    per = parse_size("4MiB")
    assert few.plan.reserved["compiled_programs"] == 2 * per
    assert many.plan.reserved["compiled_programs"] == (8 + 5) * per  # 16..2048 and 128..2048


def test_runs_beyond_the_largest_bucket_are_refused_before_they_start():
    model = tilesim.load("llama-2-7b", device="trn1", tp=8, timing_only=True, max_context=1024,
                         prefill_buckets=[128], decode_buckets=[256])  # fmt: skip
    with pytest.raises(GenerationError, match="no compiled decode bucket holds 299 positions: the largest is 256"):
        model.generate([[0] * 100], max_new_tokens=200)
    with pytest.raises(tilesim.TilesimError, match="request 3: no compiled prefill bucket"):
        serve(model, [Request(3, 0.0, 200, 4)])
    assert serve(model, [Request(3, 0.0, 200, 4)], scheduler="chunked", chunk_size=100).requests[0].generated == 4


@pytest.mark.parametrize(
    ("buckets", "message"),
    [([], "non-empty"), ([0, 128], "0"), ([4096], "4096"), ("128", "non-empty"), ([1.5], "1.5"),
     (np.array([64.5]), "64.5"), (np.array([[64]]), "non-empty list")],
)  # fmt: skip
def test_bad_bucket_lists_are_refused(buckets, message):
    with pytest.raises(ConfigError, match=f"prefill_buckets.*{message}"):
        tilesim.load("llama-2-7b", device="trn1", tp=8, timing_only=True, max_context=1024, prefill_buckets=buckets)


def test_bucket_and_end_of_sequence_arrays_are_taken_as_lists(tiny_model):
    """As a prompt, a `max_context` or a `tp` may be numpy's, so may these lists (refused before)."""
    model = tilesim.load(str(tiny_model("llama")), device="tiny", tp=1, max_context=64,
                         decode_buckets=np.array([32, 64]), prefill_buckets=np.array([16], np.int32))  # fmt: skip
    assert model.buckets.decode == (32, 64) and model.buckets.prefill == (16,)
    free = model.generate([[1, 2]], max_new_tokens=6, eos_token_id=None).tokens[0].tolist()
    stopped = model.generate([[1, 2]], max_new_tokens=6, eos_token_id=np.array([free[2]])).tokens[0].tolist()
    assert stopped == free[: free.index(free[2]) + 1]


def test_a_prompt_longer_than_the_largest_prefill_bucket_runs_in_windows_of_it():
    """As transformers-neuronx's windowed context encoding: 200 tokens in a 128-token program,
    then the other 72 in the same program over the 128 cached positions, which pays no second
    request setup; the first token comes after both."""
    model = tilesim.load("llama-2-7b", device="trn1", tp=8, timing_only=True, max_context=1024,
                         prefill_buckets=[128], decode_buckets=[256])  # fmt: skip
    out = model.generate([[0] * 200], max_new_tokens=4, eos_token_id=None)
    assert out.report["buckets"]["steps"] == {"prefill 128": 2, "decode 256": 3}
    first = model.timer.time(model.buckets.prefill_shape(1, 128)).latency
    second = model.timer.time(StepShape("prefill", 1, 128, 256, new_request=False)).latency
    setup = model.device.spec.host.request_overhead_s
    assert setup > 0
    assert second == pytest.approx(model.timer.time(StepShape("prefill", 1, 128, 256)).latency - setup, rel=1e-12)
    assert out.report["ttft_s"] == pytest.approx(first + second, rel=1e-12)
    prefills = [s for s in out.trace.steps if s.phase == "prefill"]
    assert [s.tokens for s in prefills] == [0, 1] and prefills[1].start == pytest.approx(first)
    names = [e["name"] for e in chrome_events(out.trace) if e.get("cat") == "step"]
    assert names == ["prefill 1/2", "prefill 2/2", "decode 1", "decode 2", "decode 3"]


def test_windows_give_transformers_tokens_and_the_logits_of_one_prefill(tiny_model, greedy_rule):
    """Two prompts of 13 and 19 tokens through 8-token windows (the shorter one ends in the
    second window and sits out the third): each gets transformers' greedy tokens for it alone,
    and every prompt position's logits are those of the run that prefills in one program."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    folder = str(tiny_model("llama"))
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, 100, n).tolist() for n in (13, 19)]
    device = tilesim.Device("tiny", cores=3)
    windowed = tilesim.load(folder, device=device, tp=3, max_context=64, prefill_buckets=[4, 8])
    whole = tilesim.load(folder, device=device, tp=3, max_context=64)
    assert windowed.buckets.windows(19) == [(0, 8), (8, 16), (16, 19)]
    out = windowed.generate(prompts, max_new_tokens=6, eos_token_id=None, return_logits="all")
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            gen = ref.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, output_logits=True,
                return_dict_in_generate=True, eos_token_id=None, pad_token_id=0,
            )  # fmt: skip
        expected = gen.sequences[0, len(prompt) :].tolist()
        greedy_rule(out.tokens[i], expected, [s[0].numpy() for s in gen.logits], 1e-4, f"prompt {i}")
    one = whole.generate(prompts, max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert out.logits[0].shape == one.logits[0].shape == (2 * 19, one.logits[0].shape[1])
    for i, prompt in enumerate(prompts):
        rows = slice(19 * i, 19 * i + len(prompt))  # the padding rows past a prompt are no one's logits
        scale = np.abs(one.logits[0][rows]).max()
        np.testing.assert_allclose(out.logits[0][rows], one.logits[0][rows], rtol=0, atol=1e-5 * scale)
