"""Mixtral's two shardings and its routing: whole experts on cores (expert parallel: experts
per core, or each expert over several cores) gives transformers' logits and tokens as the
split by width does; the report's tokens per expert are the routing transformers' own router
makes on the same run; the timing's share of experts per core against the closed form."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import tilesim
from tilesim.device.kernels.moe import moe_cost, touched
from tilesim.errors import ShardingError

PROMPT = [5, 17, 42, 8, 99, 3, 61, 23, 77, 12, 50, 31, 4, 66, 28, 90, 11]
STEPS = 16


@pytest.fixture(scope="module")
def reference(tiny_model):
    """transformers' tokens, step logits, and the experts its router picked, per layer."""
    hf = AutoModelForCausalLM.from_pretrained(tiny_model("mixtral"), dtype=torch.float32).eval()
    picked: dict[int, list] = {}
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda m, i, o, n=n: picked.setdefault(n, []).append(o[2].reshape(-1)))
        for n, layer in enumerate(hf.model.layers)
    ]
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        gen = hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS, do_sample=False, eos_token_id=None,
            pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    for h in hooks:
        h.remove()
    counts = [np.bincount(torch.cat(picked[n]).numpy(), minlength=4).tolist() for n in sorted(picked)]
    return gen.sequences[0, len(PROMPT) :].tolist(), [s[0].numpy() for s in gen.logits], counts


@pytest.mark.parametrize(("tp", "pad"), [(1, False), (2, True), (4, True), (8, True)])
def test_whole_experts_on_cores_give_transformers_tokens(tiny_model, reference, greedy_rule, tp, pad):
    tokens, logits, _ = reference
    model = tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=tp), tp=tp, moe="ep",
                         pad_heads=pad)  # fmt: skip
    held = [sum(1 for g in range(4) if model.sp.rows[f"layers.0.experts.{g}.gate.weight"][c][1]) for c in range(tp)]
    assert held == ([4 // tp] * tp if tp <= 4 else [1] * tp), "experts per core, or one expert over tp/E cores"
    out = model.generate([PROMPT], max_new_tokens=STEPS, eos_token_id=None, return_logits=True)
    compared = greedy_rule(out.tokens[0], tokens, logits, 1e-4, f"mixtral ep tp{tp}")
    for ours, theirs in zip(out.logits[:compared], logits, strict=False):
        assert np.max(np.abs(ours[0] - theirs)) <= 1e-4 * np.max(np.abs(theirs))


def test_the_report_counts_the_tokens_transformers_routes(tiny_model, reference):
    _, _, counts = reference
    model = tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=3), tp=3)
    experts = model.generate([PROMPT], max_new_tokens=STEPS, eos_token_id=None).report["experts"]
    # transformers routes the prompt and the 15 tokens fed back; tilesim the same rows
    assert experts["tokens_per_expert"] == counts
    assert experts["uniform_tokens_per_expert"] == (len(PROMPT) + STEPS - 1) * 2 / 4


def test_expert_parallel_needs_experts_and_cores_to_divide(tiny_model):
    with pytest.raises(ShardingError, match="4 experts cannot be placed whole on 3 cores"):
        tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=3), tp=3, moe="ep")
    with pytest.raises(ShardingError, match="moe='dp'"):
        tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=1), tp=1, moe="dp")


def test_a_core_holding_whole_experts_costs_its_share():
    e, k, h, i, m = 8, 2, 4096, 14336, 4
    split = moe_cost(m, h, i // 8, e, k)  # TP 8: a width slice of all 8 experts
    whole = moe_cost(m, h, i, e, k, held=1)  # EP 8: one whole expert
    assert whole.flops == pytest.approx(split.flops) == 2 * m * e * h + 6 * m * k * h * i / 8
    assert whole.bytes["weights"] == pytest.approx(e * h * 4 + touched(e, k, m) / 8 * 3 * h * i * 4)
    assert whole.bytes["weights"] == pytest.approx(split.bytes["weights"])
