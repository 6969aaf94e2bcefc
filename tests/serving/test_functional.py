"""Continuous batching with the real tokens: every request's greedy tokens equal
transformers' for that prompt alone (tiny random models, every scheduler, an odd TP degree),
and equal tilesim's own run of the request alone; sampling with a request's seed gives the
same tokens whatever else shares the batch. SmolLM2 on a mixed set of prompts."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import tilesim
from tilesim.serving import Request, serve, synthetic

RTOL = 1e-4


def hf_greedy(model, prompt, steps):
    with torch.no_grad():
        ids = torch.tensor([list(prompt)])
        gen = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False, output_logits=True,
            return_dict_in_generate=True,
        )  # fmt: skip
    return gen.sequences[0, len(prompt) :].tolist(), [s[0].numpy() for s in gen.logits]


def hf_model(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def workload(n=10, seed=3):
    """Requests that overlap: prompts of 2 to 40 tokens, outputs of 1 to 16, arriving in a burst."""
    return synthetic(n, rate=1e7, prompt="uniform:2,40", output="uniform:1,16", seed=seed)


@pytest.mark.parametrize(
    ("arch", "tp", "scheduler", "chunk"),
    [
        ("llama", 1, "continuous", None),
        ("llama", 3, "continuous", None),
        ("llama", 3, "chunked", 7),
        ("llama", 6, "static", None),
        ("gpt2", 3, "chunked", 16),
        ("opt", 1, "static", None),
        ("rwkv", 3, "chunked", 6),
        ("rwkv", 2, "continuous", None),
    ],
)
def test_every_request_gets_transformers_greedy_tokens(tiny_model, greedy_rule, arch, tp, scheduler, chunk):
    folder = tiny_model(arch)
    model = tilesim.load(str(folder), device=tilesim.Device("tiny", cores=tp), tp=tp, max_context=64)
    requests = workload()
    result = serve(model, requests, scheduler=scheduler, max_num_seqs=3, chunk_size=chunk, stop_at_eos=False)
    assert max(result.steps.running) == 3, "the batch was full at some point"
    reference = hf_model(folder)
    for live in result.requests:
        r = live.request
        expected, logits = hf_greedy(reference, r.prompt, r.output_tokens)
        greedy_rule(live.tokens, expected, logits, RTOL, f"{arch} tp{tp} {scheduler} request {r.id}")


@pytest.mark.parametrize("scheduler", ["continuous", "chunked", "static"])
def test_a_request_gets_the_tokens_it_gets_alone(tiny_model, scheduler):
    model = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=3), tp=3, max_context=64)
    requests = workload(12, seed=5)
    chunk = 5 if scheduler == "chunked" else None
    served = serve(model, requests, scheduler=scheduler, max_num_seqs=4, chunk_size=chunk, stop_at_eos=False)
    for live in served.requests:
        r = live.request
        alone = model.generate([list(r.prompt)], max_new_tokens=r.output_tokens, eos_token_id=None)
        assert live.tokens == alone.tokens[0].tolist(), f"request {r.id}"


def test_sampling_with_a_requests_seed_does_not_depend_on_the_batch(tiny_model):
    model = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=3), tp=3, max_context=64)
    requests = workload(8, seed=7)
    options = {"temperature": 1.0, "top_k": 20, "stop_at_eos": False}
    together = serve(model, requests, max_num_seqs=4, **options).tokens()
    chunked = serve(model, requests, scheduler="chunked", chunk_size=4, max_num_seqs=3, **options).tokens()
    for r in requests:
        alone = serve(model, [replace(r, arrival=0.0)], max_num_seqs=1, **options).tokens()[r.id]
        assert together[r.id] == alone == chunked[r.id], f"request {r.id}"
    reseeded = serve(model, [replace(r, seed=r.seed + 1) for r in requests], max_num_seqs=4, **options).tokens()
    assert any(reseeded[r.id] != together[r.id] for r in requests), "the seed is the request's"


def test_a_request_stops_at_the_end_of_sequence_token_and_frees_its_slot(tiny_model):
    folder = tiny_model("llama")
    model = tilesim.load(str(folder), device=tilesim.Device("tiny", cores=1), tp=1, max_context=64)
    prompt = (5, 17, 42, 8)
    free_run = model.generate([list(prompt)], max_new_tokens=12, eos_token_id=None).tokens[0].tolist()
    eos = free_run[3]  # make the 4th token the end of sequence
    model.graph.meta["eos_token_ids"] = [eos]
    try:
        result = serve(model, [Request(0, 0.0, 4, 12, prompt=prompt)], max_num_seqs=1)
    finally:
        model.graph.meta["eos_token_ids"] = [2]
    live = result.requests[0]
    assert live.tokens == free_run[: free_run.index(eos) + 1] and live.stopped
    assert live.generated == len(live.tokens) and result.steps.running[-1] == 0


@pytest.mark.slow
def test_smollm2_serves_a_mixed_set_of_prompts_as_transformers_answers_each(greedy_rule, smollm2_transformers):
    tokenizer, reference = smollm2_transformers
    texts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a small village by the sea, there lived an old fisherman who",
        "1, 2, 3, 4,",
        "Photosynthesis is the process by which",
    ]
    outputs = [12, 6, 10, 16, 8]
    requests = [
        Request(i, 1e-4 * i, len(ids), n, prompt=tuple(ids))
        for i, (ids, n) in enumerate(zip((tokenizer(t).input_ids for t in texts), outputs, strict=True))
    ]
    model = tilesim.load("smollm2", device=tilesim.Device("trn1", cores=3), tp=3, dtype="fp32", max_context=128)
    result = serve(model, requests, scheduler="chunked", chunk_size=8, max_num_seqs=3, stop_at_eos=False)
    for live in result.requests:
        expected, logits = hf_greedy(reference, live.request.prompt, live.request.output_tokens)
        greedy_rule(live.tokens, expected, logits, RTOL, f"smollm2 request {live.request.id}")
    assert np.max(result.steps.running) == 3
