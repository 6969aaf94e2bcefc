"""Each precision against fp32 on tiny random models: logits within the stated bound, greedy
tokens equal wherever the bound says they must be, memory and time that follow the bytes.

BOUNDS are the largest |logit - fp32 logit| allowed, relative to the largest fp32 logit (the
measured errors are in docs/precision.md). A greedy token must agree with fp32's while the
fp32 margin between the best and second-best logit is more than twice the bound.
"""

import numpy as np
import pytest

import tilesim
from tilesim.errors import ConfigError

PROMPT = [5, 17, 42, 8, 99, 3, 61, 23, 77, 12, 50, 31, 4, 66, 28, 90]
STEPS = 12
BOUNDS = {
    ("fp16", None): 5e-3, ("bf16", None): 5e-2, ("int8", None): 0.1, ("fp8", None): 0.25, ("fp8_e5m2", None): 0.5,
    ("int4", None): 1.0, ("fp32", "fp16"): 2e-3, ("fp32", "bf16"): 2e-2, ("fp32", "int8"): 5e-2, ("fp32", "fp8"): 0.25,
}  # fmt: skip
INT8_ACT_BOUND = 0.1  # int4 weights with int8 activations against the same weights with fp32 activations


def greedy_with_logits(model, steps=STEPS):
    out = model.generate([PROMPT], max_new_tokens=steps, eos_token_id=None, return_logits=True)
    return out.tokens[0], [step[0] for step in out.logits]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "opt", "glm", "bloom", "mixtral", "rwkv"])
@pytest.mark.parametrize(("dtype", "kv"), list(BOUNDS))
def test_logits_stay_within_the_bound_and_greedy_agrees_where_it_must(tiny_model, greedy_rule, arch, dtype, kv):
    folder = str(tiny_model(arch))
    fp32 = tilesim.load(folder, device="tiny", tp=1)
    low = tilesim.load(folder, device="tiny", tp=1, dtype=dtype, kv_dtype=kv)
    assert_within(low, fp32, BOUNDS[(dtype, kv)], greedy_rule, f"{arch} {dtype} kv {kv}")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "opt"])
def test_int8_activations_stay_within_their_bound_of_fp32_activations(tiny_model, greedy_rule, arch):
    folder = str(tiny_model(arch))
    fp32_act = tilesim.load(folder, device="tiny", tp=1, dtype="int4")
    int8_act = tilesim.load(folder, device="tiny", tp=1, dtype="int4", act_dtype="int8")
    assert int8_act.precision.kv == "fp32"
    assert_within(int8_act, fp32_act, INT8_ACT_BOUND, greedy_rule, f"{arch} int4:int8")


def assert_within(low, fp32, bound, greedy_rule, label):
    """low's logits within `bound` of fp32's (relative to the largest), and its greedy tokens
    equal wherever fp32's margin says they must be (the one token rule, docs/numerics.md)."""
    ref_all = fp32.generate([PROMPT], 1, eos_token_id=None, return_logits="all").logits[0]
    got_all = low.generate([PROMPT], 1, eos_token_id=None, return_logits="all").logits[0]
    assert np.max(np.abs(got_all - ref_all)) <= bound * np.max(np.abs(ref_all))
    ref_tokens, ref_logits = greedy_with_logits(fp32)
    tokens, _ = greedy_with_logits(low)
    greedy_rule(tokens, ref_tokens, ref_logits, bound, label)


@pytest.mark.parametrize("dtype", ["fp16", "int8", "int4"])
def test_lower_precision_takes_less_memory_and_less_simulated_time(tiny_model, dtype):
    folder = str(tiny_model("gpt_neox"))
    fp32 = tilesim.load(folder, device="trn1", tp=1).generate([PROMPT], 4, eos_token_id=None)
    low = tilesim.load(folder, device="trn1", tp=1, dtype=dtype).generate([PROMPT], 4, eos_token_id=None)
    w32 = fp32.report["memory"]["per_core"][0]["weights"]
    wlow = low.report["memory"]["per_core"][0]["weights"]
    assert wlow < 0.6 * w32
    assert low.report["itl_s"] <= fp32.report["itl_s"]
    precision = low.trace.model["precision"]
    assert precision["bytes_saved"] > 0 and precision["weights"]["mlp"]["formats"] == [
        "int4" if dtype == "int4" else dtype
    ]
    assert precision["weights"]["norms and biases"]["formats"] == ["fp32"]


def test_int8_activations_run_the_products_at_the_int8_peak_and_the_rest_at_fp32(tiny_model):
    model = tilesim.load("llama-2-7b", device="trn1", tp=2, dtype="int4", act_dtype="int8", timing_only=True)
    out = model.generate([PROMPT * 8], 2, eos_token_id=None)
    assert out.trace.model["act_dtype"] == "int8"
    weights = out.trace.model["precision"]["weights"]
    assert weights["mlp"]["formats"] == ["int4"] and weights["embedding"]["formats"] == ["fp32"]  # held as fp32
    core = model.device.spec.core
    products = {"q", "k", "v", "o", "gate", "up", "down"}
    checked = set()
    for span in out.trace.steps[0].spans:
        if span.lane != "compute" or not span.flops or span.op_type not in ("attention", "mlp", "norm"):
            continue
        kind = "matmul" if span.name in products else "elementwise" if span.op_type == "norm" else None
        if kind is None:
            continue
        peak = core.peak_flops["int8" if kind == "matmul" else "fp32"]
        assert span.compute_s == pytest.approx(span.flops / (peak * core.efficiency[kind].compute), rel=1e-9)
        checked.add(kind)
    assert checked == {"matmul", "elementwise"}
    folder = str(tiny_model("llama"))
    with pytest.raises(ConfigError, match="act_dtype='int8' multiplies int8 activations with block-quantized"):
        tilesim.load(folder, device="tiny", tp=1, dtype="fp16", act_dtype="int8")


def test_native_is_for_gguf_files_only(tiny_model):
    with pytest.raises(ConfigError, match="dtype='native' runs a GGUF"):
        tilesim.load(str(tiny_model("gpt2")), device="tiny", tp=1, dtype="native")
    with pytest.raises(ConfigError, match="dtype='int3' is not supported"):
        tilesim.load(str(tiny_model("gpt2")), device="tiny", tp=1, dtype="int3")


@pytest.mark.parametrize(("arch", "dtype"), [("qwen3", "fp16"), ("qwen3", "bf16"), ("qwen3_moe", "fp16")])
def test_qwen3s_16_bit_logits_are_as_close_to_fp32_as_transformers_own(tiny_model, dtype, arch):
    """The tiny Qwen3 is sharper than the table's models (its per-head norms, weights near 3,
    make the scores 9 times larger), so BOUNDS do not hold for it in any implementation:
    transformers' own 16-bit run is 0.9% (fp16) and 10% (bf16) of the largest logit off its
    fp32 run. The promise is relative: ours at most a quarter farther from fp32 than theirs.
    The tiny Qwen3-MoE keeps it in fp16, not in bf16 (docs/precision.md)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = str(tiny_model(arch))
    theirs = {}
    low = torch.float16 if dtype == "fp16" else torch.bfloat16
    for name, torch_dtype in (("fp32", torch.float32), (dtype, low)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).eval()
        with torch.no_grad():
            theirs[name] = model(torch.tensor([PROMPT])).logits[0].float().numpy()
    ours = tilesim.load(folder, device="tiny", tp=1, dtype=dtype)
    got = ours.generate([PROMPT], 1, eos_token_id=None, return_logits="all").logits[0]
    largest = np.max(np.abs(theirs["fp32"]))
    their_error = np.max(np.abs(theirs[dtype] - theirs["fp32"])) / largest
    assert np.max(np.abs(got - theirs["fp32"])) / largest <= 1.25 * their_error
