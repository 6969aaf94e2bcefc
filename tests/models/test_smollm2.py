"""SmolLM2-135M-Instruct from its GGUF file (Q4_1 weights, Q8_0 embeddings), against
transformers loading the same file in fp32 (both see the same dequantized values)."""

import numpy as np
import pytest
import torch

import tilesim
from tilesim.models.checkpoint import open_checkpoint

pytestmark = pytest.mark.slow
TEXT = "The three most important inventions of the nineteenth century were"
RTOL = 1e-4  # |logit error| relative to the step's largest |logit|, as for the tiny models


@pytest.fixture(scope="module")
def reference(smollm2_transformers):
    tokenizer, model = smollm2_transformers
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=32, do_sample=False, output_logits=True, return_dict_in_generate=True)
    steps = [step[0].numpy() for step in gen.logits]
    return tokenizer, ids[0].tolist(), gen.sequences[0, ids.shape[1] :].tolist(), steps


def test_our_tokenizer_built_from_the_gguf_matches_transformers(reference):
    hf_tokenizer, _, _, _ = reference
    ours = open_checkpoint("smollm2").tokenizer()
    samples = [
        TEXT,
        "  leading spaces and   runs",
        "Zürich, naïve café — 2024!",
        "x=1;\ny = [1, 2, 3]\n\tz",
        "<|im_start|>user\nhi<|im_end|>",
        "emoji 🚀 and 中文",
    ]
    for text in samples:
        assert ours.encode(text) == hf_tokenizer(text).input_ids, text
        assert ours.decode(ours.encode(text)) == hf_tokenizer.decode(hf_tokenizer(text).input_ids)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert ours.chat_ids(messages) == list(expected)


@pytest.mark.parametrize("dtype", ["native", "fp32"])
@pytest.mark.parametrize("tp", [1, 3])
def test_first_32_greedy_tokens_equal_transformers(reference, greedy_rule, tp, dtype):
    """`native` runs the Q4_1/Q8_0 blocks as stored; `fp32` dequantizes them at load. Logits
    within RTOL of transformers' at every step compared, tokens by the one rule."""
    _, ids, expected, ref_logits = reference
    model = tilesim.load("smollm2", device=tilesim.Device("trn1", cores=tp), tp=tp, dtype=dtype)
    out = model.generate([ids], max_new_tokens=32, eos_token_id=None, return_logits=True)
    compared = greedy_rule(out.tokens[0], expected, ref_logits, RTOL, f"smollm2 {dtype} tp{tp}")
    for step in range(compared):
        error = np.max(np.abs(out.logits[step][0] - ref_logits[step]))
        assert error <= RTOL * np.max(np.abs(ref_logits[step])), f"step {step}: |logit error| {error:.3g}"


def test_native_weights_take_the_files_packed_bytes():
    checkpoint = open_checkpoint("smollm2")
    stored = sum(t.n_bytes for t in checkpoint.reader.tensors.values())
    model = tilesim.load("smollm2", device=tilesim.Device("trn1", cores=3), tp=3)
    placed = sum(model.device.cores[c].memory.used_by_kind()["weights"] for c in range(3))
    assert placed == pytest.approx(stored, rel=0.01)
    assert {model.formats[p] for p in model.graph.params if p.endswith(("q.weight", "up.weight"))} == {"q4_1"}
    assert model.formats["embed.weight"] == "q8_0"


def test_asked_for_the_capital_of_france_the_chat_answer_names_paris():
    checkpoint = open_checkpoint("smollm2")
    tokenizer = checkpoint.tokenizer()
    ids = tokenizer.chat_ids([{"role": "user", "content": "What is the capital of France?"}])
    model = tilesim.load("smollm2", device=tilesim.Device("trn1", cores=3), tp=3)
    out = model.generate([ids], max_new_tokens=24)
    answer = tokenizer.decode(out.tokens[0].tolist(), skip_special_tokens=True)
    assert "Paris" in answer
    report = out.report
    assert report["ttft_s"] > 0 and report["itl_s"] > 0
    assert len(report["memory"]["per_core_peak_bytes"]) == 3
    assert np.all(np.array(report["memory"]["per_core_peak_bytes"]) > 0)
