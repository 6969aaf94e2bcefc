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


HIDDEN, WIDTH = 48, 40  # the tiny Mixtral's (tests/conftest.py)


def _spans(out, step, name):
    return [s for s in out.trace.steps[step].spans if s.name == name]


def test_expert_parallel_exchanges_tokens_by_all_to_all(tiny_model):
    model = tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=4), tp=4, moe="ep",
                         pad_heads=True)  # fmt: skip
    ops = [n.op for n in model.program.sp.nodes if n.layer == 0 and n.op_type in ("mlp", "collective")]
    assert ops[-6:] == ["moe_dispatch", "alltoall", "moe_experts", "alltoall", "moe_combine", "allgather"]
    out = model.generate([PROMPT], max_new_tokens=3, eos_token_id=None)
    # one expert per core, so a destination gets at most one pair per row: a block of
    # ceil(rows / 4) slots, each a row of 48 features, the expert id and the weight (fp32)
    for step, rows in ((0, 32), (1, 1)):  # the prefill bucket of 17 tokens is 32 rows
        per_core = -(-rows // 4)
        sends = [s for s in out.trace.steps[step].spans if s.name == "alltoall" and s.core == 0]
        assert [s.bytes for s in sends[:2]] == [4 * per_core * (HIDDEN + 2) * 4, 4 * per_core * HIDDEN * 4]
        gathers = [s for s in out.trace.steps[step].spans if s.name == "allgather" and s.core == 0]
        assert gathers[0].bytes == 4 * per_core * HIDDEN * 4


def test_a_functional_run_is_timed_with_the_routing_the_data_made(tiny_model, reference):
    """Each decode step's expert work per core, against the experts transformers' router picked
    for that token: 6 H I FLOPs per (token, expert) pair on the core holding the expert."""
    tokens, _, _ = reference
    hf = AutoModelForCausalLM.from_pretrained(tiny_model("mixtral"), dtype=torch.float32).eval()
    picked: dict[int, list] = {}
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, o, n=n: picked.setdefault(n, []).append(o[2]))
             for n, layer in enumerate(hf.model.layers)]  # fmt: skip
    with torch.no_grad():
        hf(torch.tensor([PROMPT + tokens[:4]]))  # one pass: the router's picks for every position
    for h in hooks:
        h.remove()
    model = tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=2), tp=2, moe="ep",
                         pad_heads=True)  # fmt: skip
    out = model.generate([PROMPT], max_new_tokens=5, eos_token_id=None)
    assert out.tokens[0].tolist() == tokens[:5]
    assert out.report["experts"]["timing_assumes"] == "the routing of each step"
    differs = False
    for step in range(1, 5):  # decode step s feeds back token s-1, at position len(PROMPT) + s - 1
        chosen = {layer: picked[layer][0].reshape(-1, 2)[len(PROMPT) + step - 1].tolist() for layer in picked}
        for span in _spans(out, step, "moe_experts"):
            held = {0: (0, 1), 1: (2, 3)}[span.core]
            pairs = sum(e in held for e in chosen[span.layer])
            assert span.flops == 6 * HIDDEN * WIDTH * pairs
            differs |= pairs != 1  # uniform routing would give every core one pair
    assert differs, "the prompt should route some token's two experts to one core"


@pytest.mark.parametrize(("imbalance", "pairs"), [(1.0, 1.0), (1.5, 1.5), (3.0, 2.0)])
def test_timing_only_assumes_uniform_routing_or_the_given_imbalance(tiny_model, imbalance, pairs):
    model = tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=2), tp=2, moe="ep",
                         pad_heads=True, timing_only=True, moe_imbalance=imbalance)  # fmt: skip
    out = model.generate([PROMPT], max_new_tokens=2)
    # a decode token's 2 of 4 experts, half of them on each core (capped at 2 pairs: both its experts)
    assert {s.flops for s in _spans(out, 1, "moe_experts")} == {6 * HIDDEN * WIDTH * pairs}
    assert "uniform routing" in out.report["experts"]["timing_assumes"]


def test_the_imbalance_must_be_a_number_of_at_least_one(tiny_model):
    with pytest.raises(tilesim.TilesimError, match=r"moe_imbalance=0\.5"):
        tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=2), tp=2, moe="ep",
                     pad_heads=True, timing_only=True, moe_imbalance=0.5)  # fmt: skip


def test_the_printed_report_says_which_routing_timed_the_run(tiny_model, capsys):
    from tilesim.cli.main import main

    folder = str(tiny_model("mixtral"))
    args = ["generate", folder, "--device", "tiny", "--tp", "2", "--moe", "ep", "--pad-heads", "--prompt-ids", "1,2,3",
            "--max-new-tokens", "2", "--report"]  # fmt: skip
    assert main(args) == 0
    assert "timing assumes the routing of each step" in capsys.readouterr().out
    assert main([*args, "--timing-only", "--moe-imbalance", "1.5"]) == 0
    assert "timing assumes uniform routing, the busiest core 1.5x its share" in capsys.readouterr().out


def test_expert_options_are_refused_where_they_would_do_nothing(tiny_model):
    dense = str(tiny_model("llama"))
    with pytest.raises(
        tilesim.ShardingError, match=r"moe='ep' places whole experts on cores, but \S*llama has no experts"
    ):
        tilesim.load(dense, device=tilesim.Device("tiny", cores=3), tp=3, moe="ep")
    with pytest.raises(tilesim.ConfigError, match=r"moe_imbalance=2\.0 .* it needs moe='ep'"):
        tilesim.load(str(tiny_model("mixtral")), device=tilesim.Device("tiny", cores=2), tp=2, pad_heads=True,
                     timing_only=True, moe_imbalance=2.0)  # fmt: skip
