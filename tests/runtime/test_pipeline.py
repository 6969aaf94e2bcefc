"""Pipeline (layer) sharding: stages of `tp` cores, each holding its layers.

Tokens and logits are compared with transformers on the CPU; memory with the bytes of each
stage's layers computed from the checkpoint's own tensors; time with closed forms (a send is
the fabric's fixed cost plus one route's idle time; micro-batches follow GPipe's recurrence).
"""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

import tilesim
from tilesim.device.topology import Topology
from tilesim.errors import OutOfOffchipMemory, ShardingError
from tilesim.profiler.chrome import write_chrome_trace
from tilesim.runtime.timing import StepShape

PROMPT = [5, 17, 42, 8, 99, 3, 61, 23, 77, 12, 50]
STEPS = 10
RTOL = 1e-4


def reference(folder, prompts, steps):
    """transformers' greedy tokens and step logits for each prompt (one at a time)."""
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            gen = hf.generate(
                torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0,
                output_logits=True, return_dict_in_generate=True,
            )  # fmt: skip
            out.append((gen.sequences[0, len(prompt) :].numpy(), [s[0].numpy() for s in gen.logits]))
    return out


CASES = [
    ("llama_deep", 1, {"pp": 5}),
    ("llama_deep", 2, {"layers_per_stage": "1,3,1"}),
    ("llama_deep", 3, {"layers_per_stage": [2, 3], "pad_heads": True}),  # padded heads on every stage
    ("llama_deep", 6, {"pp": 5, "micro_batches": 2}),
    ("gpt2", 2, {"pp": 2}),  # tied embedding and LM head, learned positions
    ("mixtral", 3, {"pp": 2}),
    ("rwkv", 1, {"pp": 2}),  # a recurrent state per layer, on its stage
]


@pytest.mark.parametrize(("arch", "tp", "stages"), CASES)
def test_pipeline_stages_give_transformers_tokens(tiny_model, greedy_rule, arch, tp, stages):
    folder = tiny_model(arch)
    prompts = [PROMPT, PROMPT[2:9]]
    ref = reference(folder, prompts, STEPS)
    model = tilesim.load(str(folder), device="tiny", tp=tp, **stages)
    assert model.cores == tp * model.stages.pp and model.device.num_cores == model.cores
    out = model.generate(prompts, max_new_tokens=STEPS, eos_token_id=None, return_logits=True)
    for i, (tokens, logits) in enumerate(ref):
        compared = greedy_rule(out.tokens[i], tokens, logits, RTOL, f"{arch} tp{tp} {stages} prompt {i}")
        for step in range(compared):
            ours, theirs = out.logits[step][i], logits[step]
            assert np.max(np.abs(ours - theirs)) <= RTOL * np.max(np.abs(theirs)), f"prompt {i} step {step}"


def test_each_stage_holds_its_layers_weights_and_kv_cache(tiny_model):
    folder = tiny_model("llama_deep")
    tensors = load_file(str(folder / "model.safetensors"))
    model = tilesim.load(str(folder), device="tiny", tp=1, layers_per_stage="1,3,1", max_context=64)

    def nbytes(keep) -> int:
        return sum(v.size * 4 for k, v in tensors.items() if keep(k))

    def layer_of(key: str) -> int | None:
        return int(key.split(".")[2]) if key.startswith("model.layers.") else None

    first = nbytes(lambda k: layer_of(k) == 0 or k == "model.embed_tokens.weight")
    middle = nbytes(lambda k: layer_of(k) in (1, 2, 3))
    last = nbytes(lambda k: layer_of(k) == 4 or k in ("model.norm.weight", "lm_head.weight"))
    plan = model.plan
    # each tensor is padded to the memory's alignment: within a few hundred bytes per tensor
    for core, want in enumerate((first, middle, last)):
        assert want <= plan.weights[core] <= want + 64 * 40, f"stage {core}"
    kv_layer = 2 * 64 * 2 * 8 * 4  # keys and values: 64 positions x 2 heads x 8 features, fp32
    assert [plan.kv_cache[c] for c in range(3)] == [kv_layer, 3 * kv_layer, kv_layer]


def test_a_tied_embedding_is_held_on_the_first_and_last_stage(tiny_model):
    model = tilesim.load(str(tiny_model("gpt2")), device="tiny", tp=1, pp=2)
    shared = model.pipeline.shared_params()
    assert shared and all(model.pipeline.param_stages[p] == (0, 1) for p in shared)
    assert any("each holds a copy" in note for note in model.notes)
    for name in shared:  # the same bytes on both cores
        a, b = model.weights[0][name], model.weights[1][name]
        assert np.array_equal(a.arrays["w"], b.arrays["w"]) and not np.shares_memory(a.arrays["w"], b.arrays["w"])


def test_a_send_costs_the_fabrics_fixed_cost_and_one_routes_time(tiny_model):
    # same kernels with and without stages: at batch 1 the stages run in turn, so a step
    # with two stages is the step on one stage plus the send of the residual rows
    folder = tiny_model("llama")
    one = tilesim.load(str(folder), device="ipu-gc200", tp=1, timing_only=True)
    two = tilesim.load(str(folder), device="ipu-gc200", tp=1, pp=2, timing_only=True)
    fabric = two.device.spec.fabric
    for shape in (StepShape("prefill", 1, 16, 16), StepShape("decode", 1, 1, 128)):
        nbytes = shape.rows * two.checkpoint.config.hidden * 4
        send = fabric.collective_overhead_s + Topology(fabric, 2).transfer_time(0, 1, nbytes)
        assert two.timer.time(shape).latency == pytest.approx(one.timer.time(shape).latency + send, rel=1e-12)


def test_micro_batches_follow_the_gpipe_schedule(tiny_model):
    folder = tiny_model("llama_deep")
    kw = {"device": "ipu-gc200", "tp": 1, "layers_per_stage": "1,3,1", "timing_only": True}
    piped = tilesim.load(str(folder), micro_batches=4, batch=8, **kw)
    alone = tilesim.load(str(folder), batch=2, **kw)  # one micro-batch of 2, stages in turn
    for phase, tokens, context in (("decode", 1, 128), ("prefill", 16, 16)):
        micro = alone.timer.time(StepShape(phase, 2, tokens, context))
        launch = piped.device.spec.host.step_overhead_s
        ends = [launch, *micro.stage_ends]
        d = [ends[s + 1] - ends[s] for s in range(3)]
        # equal micro-batches: the first goes through every stage, the other three follow the slowest
        want = launch + sum(d) + 3 * max(d) + piped.device.spec.host.sample_s * 8
        assert piped.timer.time(StepShape(phase, 8, tokens, context)).latency == pytest.approx(want, rel=1e-12)


def test_more_micro_batches_than_sequences_run_one_a_sequence_and_the_report_says_so(tiny_model):
    """A batch of 2 cut into 3 micro-batches runs as 2: the same step as 2 asked for; the
    report said 3."""
    kw = {"device": "ipu-gc200", "tp": 1, "pp": 2, "timing_only": True, "batch": 2}
    asked = tilesim.load(str(tiny_model("llama")), micro_batches=3, **kw)
    two = tilesim.load(str(tiny_model("llama")), micro_batches=2, **kw)
    runs = [m.generate([PROMPT, PROMPT], max_new_tokens=2, eos_token_id=None) for m in (asked, two)]
    assert runs[0].trace.steps[-1].latency == runs[1].trace.steps[-1].latency
    assert runs[0].report["pipeline"]["micro_batches"] == 3
    assert runs[0].report["pipeline"]["micro_batches_run"] == runs[1].report["pipeline"]["micro_batches_run"] == 2


def test_the_trace_shows_stages_sends_with_flows_and_the_report_the_bubble(tiny_model, tmp_path):
    folder = tiny_model("llama_deep")
    model = tilesim.load(str(folder), device="ipu-gc200", tp=2, pp=5)
    out = model.generate([PROMPT], max_new_tokens=3, eos_token_id=None)
    step = out.trace.steps[-1]
    cores_busy = {s.core for s in step.spans if s.lane == "compute"}
    assert cores_busy == set(range(10))
    recvs = [s for s in step.spans if s.name.startswith("recv from stage")]
    assert sorted({s.core for s in recvs}) == list(range(2, 10))  # every lane of stages 1-4
    flows = [(t.src, t.dst) for t in out.trace.steps[0].transfers if t.src // 2 != t.dst // 2]
    assert sorted(set(flows)) == [(s * 2 + lane, s * 2 + 2 + lane) for s in range(4) for lane in range(2)]
    pipe = out.report["pipeline"]
    assert pipe["pp"] == 5 and len(pipe["stage_busy_s"]) == 5
    # stages in turn: each stage's cores are busy only in their own stretch of the step
    assert pipe["bubble_fraction"] == pytest.approx(1 - sum(pipe["stage_busy_s"]) / (5 * step.latency))
    assert 0.7 < pipe["bubble_fraction"] < 0.8 + 1e-9
    write_chrome_trace(out.trace, tmp_path / "t.json")


def test_stage_errors_name_what_is_wrong(tiny_model):
    folder = str(tiny_model("llama_deep"))
    with pytest.raises(ShardingError, match=r"5 layers do not split evenly over pp=2.*layers_per_stage`, e\.g\. 2,3"):
        tilesim.load(folder, device="tiny", tp=1, pp=2)
    with pytest.raises(ShardingError, match="places 4 layers; the model has 5"):
        tilesim.load(folder, device="tiny", tp=1, layers_per_stage="1,2,1")
    with pytest.raises(ShardingError, match="at least one layer"):
        tilesim.load(folder, device="tiny", tp=1, layers_per_stage=[5, 0])
    with pytest.raises(ShardingError, match="pp=3 but layers_per_stage=2,3 lists 2 stages; give one of them"):
        tilesim.load(folder, device="tiny", tp=1, pp=3, layers_per_stage="2,3")
    with pytest.raises(ShardingError, match="needs 4 cores but the device has 2"):
        tilesim.load(folder, device=tilesim.Device("tiny", cores=2), tp=2, layers_per_stage="2,3")
    with pytest.raises(ShardingError, match="whole numbers"):
        tilesim.load(folder, device="tiny", tp=1, layers_per_stage="2,x")


def test_a_stage_that_does_not_fit_names_the_stage_its_layers_and_bytes(tiny_model):
    # one stage holds 4 of 5 layers: with off-chip memory for a bit more than 2 layers it cannot fit
    folder = str(tiny_model("llama_deep"))
    even = tilesim.load(folder, device="tiny", tp=1, pp=5, max_context=64, timing_only=True)
    layer = max(even.plan.weights[c] + even.plan.kv_cache[c] for c in range(5))
    small = tilesim.Device("tiny", cores=2, offchip_bytes=f"{int(layer * 2.5)} B")
    with pytest.raises(OutOfOffchipMemory, match=r"core 1 \(pipeline stage 1, layers 1-4\) needs .*B of off-chip"):
        tilesim.load(folder, device=small, tp=1, layers_per_stage="1,4", max_context=64, timing_only=True)
    roomy = tilesim.Device("tiny", cores=2, offchip_bytes=f"{int(layer * 3.5)} B")
    fits = tilesim.load(folder, device=roomy, tp=1, layers_per_stage="2,3", max_context=64, timing_only=True)
    assert fits.cores == 2


@pytest.mark.parametrize("layers", ["1,3,1", "1,1,1,1,1"])
def test_with_micro_batches_the_critical_path_still_adds_up_to_the_step(tiny_model, layers):
    folder = str(tiny_model("llama_deep"))
    model = tilesim.load(folder, device="ipu-gc200", tp=2, layers_per_stage=layers, micro_batches=3, batch=6,
                         timing_only=True)  # fmt: skip
    for shape in (StepShape("decode", 6, 1, 128), StepShape("prefill", 6, 16, 16), StepShape("decode", 4, 1, 128)):
        timing = model.timer.time(shape)
        critical = sum(s.duration for s in timing.spans if s.critical)
        assert critical == pytest.approx(timing.latency, rel=1e-9)
        stages = {s.core // 2 for s in timing.spans if s.lane == "compute"}
        assert stages == set(range(model.stages.pp))
