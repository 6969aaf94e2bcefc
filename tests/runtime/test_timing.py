"""Step timing against closed-form costs: the roofline per kernel, alpha-beta per collective,
and a critical path that adds up to the step's latency."""

import math

import numpy as np
import pytest

import tilesim

PROMPT = [5, 17, 42, 8, 99, 3, 61, 23]


def run(folder, tp, algo="ring", steps=4, preset="tiny"):
    model = tilesim.load(str(folder), device=tilesim.Device(preset, cores=tp), tp=tp, algo=algo)
    return model, model.generate([PROMPT], max_new_tokens=steps, eos_token_id=None)


@pytest.mark.parametrize(("arch", "tp"), [("gpt2", 1), ("gpt2", 3), ("llama", 3), ("gpt_neox", 6)])
def test_the_critical_path_adds_up_to_each_steps_latency(tiny_model, arch, tp):
    _, out = run(tiny_model(arch), tp)
    for step in out.trace.steps:
        critical = sum(s.duration for s in step.spans if s.critical)
        assert critical == pytest.approx(step.latency, rel=1e-12)
        assert max(s.end for s in step.spans) == pytest.approx(step.latency, rel=1e-12)


def test_a_decode_matmul_takes_its_roofline_time(tiny_model):
    """tiny: 1 TFLOP/s fp32, weights off-chip at 100 GB/s, activations in tiles at 1 TB/s, 1 us per kernel."""
    _, out = run(tiny_model("gpt2"), 2)
    step = out.trace.steps[-1]
    up = next(s for s in step.spans if s.name == "up" and s.core == 0 and s.layer == 0)
    out_f, in_f = 192 // 2, 48  # the MLP's 4 * 48 outputs split over two cores
    flops = 2 * out_f * in_f
    weight_bytes = (out_f * in_f + out_f) * 4  # the matrix and the bias
    act_bytes = (in_f + out_f) * 4
    expected = 1e-6 + max(flops / 1e12, weight_bytes / 100e9 + act_bytes / 1e12)
    assert up.duration == pytest.approx(expected, rel=1e-12)
    assert up.bound == "memory"


def test_an_allreduce_takes_the_ring_formula(tiny_model):
    """tiny: 1 us per hop, 1 GB/s links; a decode all-reduce of the 48-wide hidden state on 2 cores."""
    _, out = run(tiny_model("gpt2"), 2, algo="ring")
    step = out.trace.steps[-1]
    allreduce = next(s for s in step.spans if s.lane == "collective" and s.name == "allreduce" and s.core == 0)
    chunk = math.ceil(48 / 2) * 4
    assert allreduce.algo == "ring"
    assert allreduce.duration == pytest.approx(2 * (1e-6 + chunk / 1e9), rel=1e-9)


@pytest.mark.parametrize("algo", ["halving_doubling", "binomial_tree", "double_binary_tree", "hierarchical"])
def test_a_named_all_reduce_algorithm_runs_the_all_reduces_and_leaves_the_logits_gather_to_one_that_can(
    tiny_model, algo
):
    """Only ring and direct can all-gather: with any other named, every model over more than
    one core was refused ("cannot do allgather"), for the logits' gather it has."""

    def collectives(out, name):
        return [(s.algo, s.bytes) for s in out.trace.steps[-1].spans if s.lane == "collective" and s.name == name]

    _, out = run(tiny_model("llama"), 3, algo=algo)
    _, auto = run(tiny_model("llama"), 3, algo="auto")
    assert {a for a, _ in collectives(out, "allreduce")} == {algo}
    assert collectives(out, "allgather") == collectives(auto, "allgather") != []
    np.testing.assert_array_equal(out.tokens, auto.tokens)


def test_an_algorithm_without_an_all_reduce_is_refused(tiny_model):
    with pytest.raises(tilesim.ConfigError, match="algo='pairwise' is not an all-reduce algorithm"):
        run(tiny_model("llama"), 2, algo="pairwise")


def test_timing_does_not_depend_on_the_data(tiny_model):
    model = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=3), tp=3)
    a = model.generate([PROMPT], max_new_tokens=4, eos_token_id=None)
    b = model.generate([[x + 1 for x in PROMPT]], max_new_tokens=4, eos_token_id=None)
    assert [s.latency for s in a.trace.steps] == [s.latency for s in b.trace.steps]


def test_decode_is_compiled_per_context_bucket(tiny_model):
    model = tilesim.load(str(tiny_model("gpt2")), device=tilesim.Device("tiny", cores=1), tp=1, max_context=256)
    out = model.generate([[i % 100 + 1 for i in range(120)]], max_new_tokens=12, eos_token_id=None)
    contexts = [s.shape["context"] for s in out.trace.steps if s.phase == "decode"]
    assert contexts[0] == 128 and contexts[-1] == 256
    by_context = {s.shape["context"]: s.latency for s in out.trace.steps if s.phase == "decode"}
    assert by_context[256] > by_context[128]  # attention reads more of the cache


def test_more_cores_share_the_weights_and_the_time(tiny_model):
    _, one = run(tiny_model("gpt_neox"), 1, preset="trn1")
    _, six = run(tiny_model("gpt_neox"), 6, preset="trn1")
    w1 = one.report["memory"]["per_core"][0]["weights"]
    w6 = six.report["memory"]["per_core"][0]["weights"]
    assert w6 < w1 / 3


HOST = {"step_overhead_s": "1 ms", "sample_s": "0.1 ms", "request_overhead_s": "5 ms"}


def _steps(folder, batch, **host):
    device = tilesim.Device("tiny", cores=3, **host)
    model = tilesim.load(str(folder), device=device, tp=3, batch=batch)
    prompts = [PROMPT, PROMPT[:5]][:batch]
    return model.generate(prompts, max_new_tokens=3, eos_token_id=None).trace.steps


def test_the_host_adds_a_launch_per_program_a_sample_per_sequence_and_a_request_setup(tiny_model):
    folder = tiny_model("llama")
    bare, host = _steps(folder, 2), _steps(folder, 2, **HOST)
    prefill, decode = host[0], host[-1]
    assert decode.latency == pytest.approx(bare[-1].latency + 1e-3 + 2 * 0.1e-3, rel=1e-12)
    assert prefill.latency == pytest.approx(bare[0].latency + 5e-3 + 1e-3 + 2 * 0.1e-3, rel=1e-12)
    names = {s.name for s in decode.spans if s.lane == "host"}
    assert names == {"launch", "sample"}
    for step in host:
        critical = sum(s.duration for s in step.spans if s.critical)
        assert critical == pytest.approx(step.latency, rel=1e-12)


def test_a_context_batch_of_one_prefills_the_sequences_in_turn(tiny_model):
    """transformers-neuronx compiles its context encoding for one sequence: a batch of two
    prompts is prefilled as two programs, each with its launch and its sequence's sampling."""
    folder = tiny_model("llama")
    one = _steps(folder, 1, **HOST)[0]
    two = _steps(folder, 2, **HOST, context_batch=1)[0]
    assert two.latency == pytest.approx(5e-3 + 2 * (one.latency - 5e-3), rel=1e-12)
    launches = sorted(s.start for s in two.spans if s.name == "launch" and s.core == 0)
    assert launches == pytest.approx([5e-3, one.latency])


def test_a_context_batch_of_one_runs_and_plans_the_prefill_one_sequence_at_a_time(tiny_model):
    """The functional run prefills as the timing does: each sequence in its own program, in
    its own KV cache slot. The logits are those of the whole batch prefilled at once, and
    the memory plan holds one sequence's prefill rows, not the batch's."""
    folder = str(tiny_model("llama"))
    prompts = [PROMPT, PROMPT[:5], PROMPT[3:9]]
    runs = {}
    for context_batch in (None, 1):
        device = tilesim.Device("tiny", cores=3, context_batch=context_batch)
        model = tilesim.load(folder, device=device, tp=3, batch=3)
        out = model.generate(prompts, max_new_tokens=4, eos_token_id=None, return_logits=True)
        runs[context_batch] = (model.prefill_batch, model.plan.activations[0], out)
    (whole, whole_bytes, together), (one, one_bytes, apart) = runs[None], runs[1]
    assert (whole, one) == (3, 1) and one_bytes < whole_bytes
    notes = apart.report["memory"]["notes"]
    assert "a prefill of the batch of 3 runs as 3 programs of 1 sequence, one after another" in " ".join(notes)
    for a, b in zip(together.logits, apart.logits, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    assert [t.tolist() for t in apart.tokens] == [t.tolist() for t in together.tokens]


def test_a_step_whose_hidden_states_do_not_fit_in_tile_memory_reads_its_activations_off_chip(tiny_model):
    """tiny: tiles at 1 TB/s, off-chip at 100 GB/s; gpt2 tiny: hidden 48, fp32. With 8 KiB of
    tiles a 32-token prefill's hidden states (32 x 48 x 4 = 6 KiB) fit, a 64-token prefill's
    (12 KiB) do not, and a one-row decode step's do."""
    device = tilesim.Device("tiny", cores=1, tiles=8, tile_bytes="1 KiB")
    model = tilesim.load(str(tiny_model("gpt2")), device=device, tp=1, max_context=128)
    assert model.timer.staged_rows() == 8 * 1024 // (48 * 4)
    for tokens, act_bw in ((32, 1e12), (64, 100e9)):
        out = model.generate([[i % 90 + 1 for i in range(tokens)]], max_new_tokens=2, eos_token_id=None)
        assert out.trace.model["staged_rows"] == 42
        for step, rows, bw in ((out.trace.steps[0], tokens, act_bw), (out.trace.steps[-1], 1, 1e12)):
            up = next(s for s in step.spans if s.name == "up" and s.layer == 0)
            weights = (192 * 48 + 192) * 4 / 100e9
            assert up.memory_s == pytest.approx(weights + rows * (48 + 192) * 4 / bw, rel=1e-12)


def test_a_prefill_in_turn_stages_its_activations_by_the_hidden_states_of_the_whole_batch(tiny_model):
    """With a context batch of one, each sequence's program reads its activations from where
    the whole batch's hidden states fit: two 32-token prompts (2 x 32 x 48 x 4 = 12 KiB) do not
    fit in 8 KiB of tiles, though each one's 6 KiB would, so both programs stream them through
    off-chip memory (100 GB/s); one 32-token prompt alone keeps them in the tiles (1 TB/s)."""
    folder = str(tiny_model("gpt2"))
    prompt = [i % 90 + 1 for i in range(32)]
    for batch, act_bw in ((1, 1e12), (2, 100e9)):
        device = tilesim.Device("tiny", cores=1, tiles=8, tile_bytes="1 KiB", context_batch=1)
        model = tilesim.load(folder, device=device, tp=1, batch=batch, max_context=64)
        prefill = model.generate([prompt] * batch, max_new_tokens=1, eos_token_id=None).trace.steps[0]
        ups = [s for s in prefill.spans if s.name == "up" and s.layer == 0]
        assert len(ups) == batch  # one program per sequence
        weights = (192 * 48 + 192) * 4 / 100e9
        for up in ups:
            assert up.memory_s == pytest.approx(weights + 32 * (48 + 192) * 4 / act_bw, rel=1e-12)
