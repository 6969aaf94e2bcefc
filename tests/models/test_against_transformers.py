"""Every architecture, at every tensor-parallel degree its heads allow, against transformers on the CPU.

The reference is transformers' own forward pass and `generate` on the same saved checkpoint;
nothing here is compared with an earlier tilesim output.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

import tilesim

CASES = [
    ("llama", 1),
    ("llama", 3),
    ("llama", 6),
    ("llama3_rope", 1),
    ("llama3_rope", 3),
    ("llama_linear_rope", 3),
    ("llama_yarn", 1),
    ("llama_yarn", 3),
    ("llama_yarn_mscale", 3),
    ("qwen2_yarn", 3),
    ("llama_dynamic", 3),
    ("llama_head_dim", 3),
    ("mistral", 1),
    ("mistral", 2),
    ("mistral", 6),
    ("qwen2", 1),
    ("qwen2", 3),
    ("qwen3", 1),
    ("qwen3", 3),
    ("gpt2", 1),
    ("gpt2", 2),
    ("gpt2", 3),
    ("gpt2", 6),
    ("opt", 1),
    ("opt", 3),
    ("gptj", 1),
    ("gptj", 2),
    ("gptj", 3),
    ("gpt_neox", 1),
    ("gpt_neox", 3),
    ("gpt_neox", 6),
    ("gpt_neox_sequential", 2),
    ("glm", 1),
    ("glm", 3),
    ("glm", 6),
    ("bloom", 1),
    ("bloom", 3),
    ("bloom", 6),
    ("mixtral", 1),
    ("mixtral", 3),
    ("mixtral", 6),
    ("qwen3_moe", 1),
    ("qwen3_moe", 3),
    ("rwkv", 1),
    ("rwkv", 2),
    ("rwkv", 3),
    ("rwkv", 5),
]
PROMPT = [5, 17, 42, 8, 99, 3, 61, 23, 77, 12, 50, 31, 4, 66, 28, 90, 11]
STEPS = 16
RTOL = 1e-4  # relative to the largest logit of the step


def reference(folder, prompts, steps):
    """transformers' logits of every prompt position and of each greedy step, and its tokens."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    out = {}
    with torch.no_grad():
        out["prefill"] = model(torch.tensor([prompts[0]])).logits[0].numpy()
        gen = model.generate(
            torch.tensor([prompts[0]]),
            max_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    out["tokens"] = gen.sequences[0, len(prompts[0]) :].numpy()
    out["step_logits"] = [step[0].numpy() for step in gen.logits]
    return model, out


def close(ours, theirs):
    return np.max(np.abs(ours - theirs)) <= RTOL * np.max(np.abs(theirs))


@pytest.mark.parametrize(("arch", "tp"), CASES)
def test_logits_and_greedy_tokens_match_transformers(tiny_model, greedy_rule, arch, tp):
    folder = tiny_model(arch)
    _, ref = reference(folder, [PROMPT], STEPS)
    model = tilesim.load(str(folder), device=tilesim.Device("tiny", cores=tp), tp=tp)
    prefill = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert prefill.logits[0].shape == ref["prefill"].shape
    assert close(prefill.logits[0], ref["prefill"]), "prefill logits of every position"
    out = model.generate([PROMPT], max_new_tokens=STEPS, eos_token_id=None, return_logits=True)
    compared = greedy_rule(out.tokens[0], ref["tokens"], ref["step_logits"], RTOL, f"{arch} tp{tp}")
    for step, (ours, theirs) in enumerate(zip(out.logits[:compared], ref["step_logits"], strict=False)):
        assert close(ours[0], theirs), f"logits of step {step}"


PADDED = [("llama_gqa10", 4), ("llama_gqa10", 5), ("llama_gqa10", 3), ("llama", 4), ("mistral", 4), ("gpt2", 4),
          ("glm", 4), ("bloom", 4), ("mixtral", 4), ("qwen3", 4), ("qwen3_moe", 4)]  # fmt: skip


@pytest.mark.parametrize(("arch", "tp"), PADDED)
def test_heads_padded_as_transformers_neuronx_pads_them_give_transformers_logits(tiny_model, greedy_rule, arch, tp):
    # degrees the heads do not divide: zero query heads (and replicated or added key/value
    # heads) fill every core, and the numbers stay transformers'
    folder = tiny_model(arch)
    _, ref = reference(folder, [PROMPT], STEPS)
    model = tilesim.load(str(folder), device=tilesim.Device("tiny", cores=tp), tp=tp, pad_heads=True)
    assert model.sp.heads[0] % tp == 0 and model.sp.heads[0] > model.graph.heads
    prefill = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert close(prefill.logits[0], ref["prefill"]), "prefill logits of every position"
    out = model.generate([PROMPT], max_new_tokens=STEPS, eos_token_id=None, return_logits=True)
    compared = greedy_rule(out.tokens[0], ref["tokens"], ref["step_logits"], RTOL, f"{arch} tp{tp} padded")
    for step, (ours, theirs) in enumerate(zip(out.logits[:compared], ref["step_logits"], strict=False)):
        assert close(ours[0], theirs), f"logits of step {step}"


@pytest.mark.parametrize(
    ("arch", "tp", "moe"),
    [("llama", 3, "tp"), ("gpt2", 2, "tp"), ("gpt_neox", 3, "tp"), ("opt", 1, "tp"), ("glm", 3, "tp"),
     ("bloom", 3, "tp"), ("mixtral", 3, "tp"), ("mixtral", 4, "ep"), ("qwen3_moe", 4, "ep")],  # ep: all-to-all
)  # fmt: skip
def test_a_batch_of_prompts_of_different_lengths(tiny_model, greedy_rule, arch, tp, moe):
    folder = tiny_model(arch)
    prompts = [PROMPT[:5], PROMPT[3:16]]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    longest = max(len(p) for p in prompts)
    ids = torch.zeros((2, longest), dtype=torch.long)
    mask = torch.zeros((2, longest), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as decoder-only generation needs
        ids[i, longest - len(p) :] = torch.tensor(p)
        mask[i, longest - len(p) :] = 1
    with torch.no_grad():
        gen = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    expected = gen.sequences[:, longest:].numpy()
    model = tilesim.load(str(folder), device=tilesim.Device("tiny", cores=tp), tp=tp, moe=moe, pad_heads=moe == "ep")
    out = model.generate(prompts, max_new_tokens=8, eos_token_id=None)
    for i in range(len(prompts)):
        step_logits = [step[i].numpy() for step in gen.logits]
        greedy_rule(out.tokens[i], expected[i], step_logits, RTOL, f"{arch} tp{tp} prompt {i}")


def test_generation_stops_at_eos_like_transformers(tiny_model):
    folder = tiny_model("llama")
    model = tilesim.load(str(folder), device=tilesim.Device("tiny", cores=1), tp=1)
    free = model.generate([PROMPT], max_new_tokens=12, eos_token_id=None)
    stop = int(free.tokens[0][4])  # pretend the fifth greedy token is the end of sequence
    out = model.generate([PROMPT], max_new_tokens=12, eos_token_id=stop)
    first = free.tokens[0].tolist().index(stop)
    assert out.tokens[0].tolist() == free.tokens[0][: first + 1].tolist() and out.finished == [True]


@pytest.mark.parametrize("generation_config", ["stops", "no stops", "unreadable", "absent"])
def test_the_stops_come_from_generation_config_as_transformers_takes_them(tiny_model, tmp_path, generation_config):
    """transformers' generate stops at generation_config.json's eos_token_id (config.json's
    only when the file is absent or unreadable); runs stopped at config.json's before."""
    folder = tmp_path / "llama"
    shutil.copytree(tiny_model("llama"), folder)
    free = tilesim.load(str(folder), device="tiny", tp=1).generate([PROMPT], max_new_tokens=12, eos_token_id=None)
    stop = int(free.tokens[0][4])
    written = {"stops": json.dumps({"eos_token_id": [stop, 99]}), "no stops": "{}", "unreadable": "{not json"}
    path = folder / "generation_config.json"
    if generation_config == "absent":
        path.unlink()
    else:
        path.write_text(written[generation_config])
    expected = AutoModelForCausalLM.from_pretrained(folder).generation_config.eos_token_id
    expected = [] if expected is None else expected if isinstance(expected, list) else [expected]
    if generation_config in ("no stops", "unreadable"):
        with pytest.warns(UserWarning, match="names no eos_token_id" if expected == [] else "cannot read it"):
            model = tilesim.load(str(folder), device="tiny", tp=1)
    else:
        model = tilesim.load(str(folder), device="tiny", tp=1)
    assert sorted(model.graph.meta["eos_token_ids"]) == sorted(expected)
    out = model.generate([PROMPT], max_new_tokens=12)
    tokens = free.tokens[0].tolist()
    ends = [i for i, t in enumerate(tokens) if t in expected]
    assert out.tokens[0].tolist() == tokens[: ends[0] + 1 if ends else None]
    if generation_config == "stops":
        assert out.finished == [True] and len(out.tokens[0]) <= 5


@pytest.mark.parametrize("tp", [1, 3])
def test_sampling_with_a_seed_is_reproducible(tiny_model, tp):
    folder = tiny_model("gpt_neox")
    model = tilesim.load(str(folder), device=tilesim.Device("tiny", cores=tp), tp=tp)
    kw = {"max_new_tokens": 12, "eos_token_id": None, "temperature": 1.3, "top_k": 20, "top_p": 0.9}
    a = model.generate([PROMPT, PROMPT[:6]], seed=7, **kw)
    b = model.generate([PROMPT, PROMPT[:6]], seed=7, **kw)
    c = model.generate([PROMPT, PROMPT[:6]], seed=8, **kw)
    assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
    assert [t.tolist() for t in a.tokens] != [t.tolist() for t in c.tokens]
    greedy = model.generate([PROMPT], max_new_tokens=6, eos_token_id=None)
    top1 = model.generate([PROMPT], max_new_tokens=6, eos_token_id=None, top_k=1, temperature=0.7, seed=3)
    assert greedy.tokens[0].tolist() == top1.tokens[0].tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_a_config_that_ties_over_a_stored_output_layer_runs_it_as_transformers_does(tiny_model, tmp_path, arch):
    # tie_word_embeddings true, yet the file holds an output layer with other values:
    # transformers keeps it untied (and warns), so its logits come from that layer
    folder = tmp_path / arch
    shutil.copytree(tiny_model(arch), folder)
    tensors = load_file(folder / "model.safetensors")
    head = "embed_out.weight" if arch == "gpt_neox" else "lm_head.weight"
    tensors[head] = np.random.default_rng(1).standard_normal(tensors[head].shape).astype(np.float32)
    save_file(tensors, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    _, ref = reference(folder, [PROMPT], 1)
    with pytest.warns(UserWarning, match=f"holds its own '{head}' with other values"):
        model = tilesim.load(str(folder), device="tiny", tp=1)
    out = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert close(out.logits[0], ref["prefill"]), "prefill logits of every position"
