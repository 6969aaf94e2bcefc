"""Emulated cores hosted on Ray actors (a local cluster on 127.0.0.1, started and stopped
here): the same tokens, logits, simulated times and traces as one process; an actor that
dies is `HostLost`; a per-actor memory budget; a model of about 1B parameters in fp32 that
one actor's budget refuses runs over four, with transformers' tokens."""

import gc
import json
import os
import sys
import threading

import numpy as np
import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import tilesim
from tilesim.cli.main import main
from tilesim.errors import ConfigError, HostLost, OutOfTileMemory
from tilesim.runtime.distributed import _lowest_priority

PROMPTS = [[5, 17, 42, 8, 99, 3], [61, 23, 77]]


def _spans(out):
    return [[(s.core, s.lane, s.name, s.start, s.end, s.critical) for s in step.spans] for step in out.trace.steps]


@pytest.fixture(scope="module")
def hosted(cluster, tiny_model):
    """llama_deep at TP 2 on two actors (the test that kills one runs last)."""
    model = tilesim.load(str(tiny_model("llama_deep")), "tiny", tp=2, cluster="auto", cores_per_actor=1)
    yield model
    model.close()


def _same_run(hosted, alone):
    want = alone.generate(PROMPTS, max_new_tokens=6, eos_token_id=None, return_logits=True)
    got = hosted.generate(PROMPTS, max_new_tokens=6, eos_token_id=None, return_logits=True)
    assert [t.tolist() for t in got.tokens] == [t.tolist() for t in want.tokens]
    assert all(np.array_equal(a, b) for a, b in zip(got.logits, want.logits, strict=True))
    assert _spans(got) == _spans(want)  # the driver's timer: the same simulated times and trace
    assert got.report["ttft_s"] == want.report["ttft_s"] and got.report["tpot_s"] == want.report["tpot_s"]


def test_on_two_actors_the_run_is_bit_identical_to_one_process(hosted, tiny_model):
    assert len(hosted.executor.actors) == 2 and hosted.executor.graph is not None
    _same_run(hosted, tilesim.load(str(tiny_model("llama_deep")), "tiny", tp=2))


def test_pipeline_lanes_on_actors_are_bit_identical_too(cluster, tiny_model):
    folder = str(tiny_model("gpt2"))  # each actor holds one lane: its core on both stages
    hosted = tilesim.load(folder, "tiny", tp=2, pp=2, cluster="auto", cores_per_actor=2)
    try:
        assert len(hosted.executor.actors) == 2
        _same_run(hosted, tilesim.load(folder, "tiny", tp=2, pp=2))
    finally:
        hosted.close()


def test_a_step_costs_one_actor_call_per_collective_and_the_bytes_are_counted(hosted):
    model = hosted
    ex = model.executor
    calls, steps, moved = ex.calls, ex.steps, ex.bytes_moved
    model.generate([PROMPTS[0]], max_new_tokens=3, eos_token_id=None)
    collectives = sum(1 for s in model.program.steps if s.kind in ("allreduce", "gather_logits"))
    assert ex.boundaries == collectives == 2 * 5 + 2  # two all-reduces a layer, the embedding's, the logits'
    assert ex.calls - calls == 3 * collectives * 2 and ex.steps - steps == 3
    hidden, vocab = 48, 101
    # each all-reduce: both lanes' rows (the prompt's 6, then 1) to the other actor; the logits to the driver
    prefill = 6 * (collectives - 1) * hidden * 2 * 4 + 1 * vocab * 4
    decode = 1 * (collectives - 1) * hidden * 2 * 4 + 1 * vocab * 4
    assert ex.bytes_moved - moved == prefill + 2 * decode


def test_an_actor_that_dies_stops_the_run_naming_its_cores(hosted, tiny_model):
    first = hosted.generate([PROMPTS[0]], max_new_tokens=4, eos_token_id=None)
    ray.kill(hosted.executor.actors[1])
    with pytest.raises(HostLost, match=r"actor 1 held cores \[1\]"):
        hosted.generate([PROMPTS[0]], max_new_tokens=4, eos_token_id=None)
    hosted.close()
    again = tilesim.load(str(tiny_model("llama_deep")), "tiny", tp=2, cluster="auto", cores_per_actor=1)
    try:
        assert again.generate([PROMPTS[0]], max_new_tokens=4, eos_token_id=None).tokens[0].tolist() == (
            first.tokens[0].tolist()
        )
    finally:
        again.close()


def test_arguments_that_cannot_be_placed_are_refused(cluster, tiny_model):
    with pytest.raises(ConfigError, match="multiple of 2"):
        tilesim.load(str(tiny_model("gpt2")), "tiny", tp=2, pp=2, cluster="auto", cores_per_actor=1)
    with pytest.raises(ConfigError, match="mixture of experts"):
        tilesim.load(str(tiny_model("mixtral")), "tiny", tp=3, cluster="auto")
    with pytest.raises(ConfigError, match="actor_memory"):
        tilesim.load(str(tiny_model("llama")), "tiny", tp=1, cluster="auto", actor_memory="lots")


def test_the_command_line_runs_on_actors(cluster, capsys, tiny_model):
    folder = str(tiny_model("llama_deep"))
    argv = ["generate", folder, "--device", "tiny", "--tp", "2", "--prompt-ids", "5,6,7", "--max-new-tokens", "4",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    alone = json.loads(capsys.readouterr().out)
    assert main([*argv, "--ray", "auto"]) == 0  # one actor per host: here, one holding both lanes
    hosted = json.loads(capsys.readouterr().out)
    assert hosted["outputs"] == alone["outputs"] and hosted["report"]["tpot_s"] == alone["report"]["tpot_s"]


@pytest.fixture(scope="module")
def billion(tmp_path_factory):
    """A random Llama of about 0.85B parameters in fp32 (3.4 GB), saved, and transformers'
    first 8 greedy tokens of a prompt."""
    config = LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("billion")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():  # spread the logits apart, as the tiny models do
            p.mul_(3.0)
        prompt = [1, 306, 4658, 278, 6593, 310, 2834, 338]
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)  # fmt: skip
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return folder, prompt, gen[0, len(prompt) :].tolist(), params


def test_a_1b_model_one_actor_cannot_hold_runs_over_four_with_transformers_tokens(cluster, billion):
    folder, prompt, expected, params = billion
    assert 0.8e9 < params < 1.1e9
    device = tilesim.Device("tiny", cores=4, offchip_bytes="4GiB", backed=False)  # room on every core
    with pytest.raises(OutOfTileMemory, match=r"actor 0 would hold cores 0-3.*actor_memory=1 GiB"):
        tilesim.load(str(folder), device, tp=4, cluster="auto", cores_per_actor=4, actor_memory="1GiB",
                     max_context=64)  # fmt: skip
    model = tilesim.load(str(folder), device, tp=4, cluster="auto", cores_per_actor=1, actor_memory="1GiB",
                         max_context=64)  # fmt: skip
    try:
        out = model.generate([prompt], max_new_tokens=8, eos_token_id=None)
    finally:
        model.close()
    assert out.tokens[0].tolist() == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_a_waiting_thread_runs_only_when_a_core_would_idle_and_leaves_the_others_alone():
    """Ray's channel reads spin: the driver's and the actors' waiting threads lower themselves
    (docs/distributed.md)."""
    policies = {}

    def waiter():
        _lowest_priority()
        policies["waiter"] = os.sched_getscheduler(0)
        worker = threading.Thread(target=lambda: policies.update(spawned=os.sched_getscheduler(0)))
        worker.start()
        worker.join()

    before = os.sched_getscheduler(0)
    thread = threading.Thread(target=waiter)
    thread.start()
    thread.join()
    assert policies["waiter"] == os.SCHED_IDLE
    assert policies["spawned"] == os.SCHED_IDLE  # why an actor starts its work thread before lowering
    assert os.sched_getscheduler(0) == before != os.SCHED_IDLE
