"""ChatGLM2/3's own checkpoint layout (THUDM's releases) onto the GLM graph: a tiny
GlmForCausalLM's weights written the way ChatGLM names and fuses them (the mapping is the
one transformers' GLM conversion script undoes: query_key_value holds Q, then K, then V;
dense_h_to_4h holds gate then up), with a config in ChatGLM's fields that asks for remote
code. tilesim loads it through its own module, never running that code, and gives
transformers' tokens. An unknown architecture that asks for remote code is refused, naming it."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

import tilesim
from tilesim.errors import CheckpointError

PROMPT = [5, 17, 42, 8, 99, 3, 61, 23, 77, 12]
REMOTE = "open('{marker}', 'w').write('ran')\n"


def chatglm_folder(glm_folder, out, marker):
    hf = AutoModelForCausalLM.from_pretrained(glm_folder, dtype=torch.float32)
    c = hf.config
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    t = {
        "transformer.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": sd["model.norm.weight"],
        "transformer.output_layer.weight": sd["lm_head.weight"],
    }
    for i in range(c.num_hidden_layers):
        a, p = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        t[p + "input_layernorm.weight"] = sd[a + "input_layernorm.weight"]
        t[p + "post_attention_layernorm.weight"] = sd[a + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            t[p + f"self_attention.query_key_value.{kind}"] = np.concatenate(
                [sd[a + f"self_attn.{x}_proj.{kind}"] for x in "qkv"], axis=0
            )
        t[p + "self_attention.dense.weight"] = sd[a + "self_attn.o_proj.weight"]
        t[p + "mlp.dense_h_to_4h.weight"] = sd[a + "mlp.gate_up_proj.weight"]
        t[p + "mlp.dense_4h_to_h.weight"] = sd[a + "mlp.down_proj.weight"]
    out.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(out / "model.safetensors"))
    config = {
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "num_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_attention_heads,
        "multi_query_attention": True,
        "multi_query_group_num": c.num_key_value_heads,
        "kv_channels": c.head_dim,
        "ffn_hidden_size": c.intermediate_size,
        "padded_vocab_size": c.vocab_size,
        "seq_length": c.max_position_embeddings,
        "layernorm_epsilon": c.rms_norm_eps,
        "rmsnorm": True,
        "add_qkv_bias": True,
        "apply_residual_connection_post_layernorm": False,
        "post_layer_norm": True,
        "original_rope": True,
        "rope_ratio": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config))
    for name in ("modeling_chatglm.py", "configuration_chatglm.py"):  # code that must never run
        (out / name).write_text(REMOTE.format(marker=marker))
    return hf


@pytest.mark.parametrize("tp", [1, 3])
def test_chatglm_layout_gives_transformers_glm_tokens(tiny_model, tmp_path, greedy_rule, tp):
    marker = tmp_path / "remote-code-ran"
    hf = chatglm_folder(tiny_model("glm"), tmp_path / "chatglm", marker)
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        gen = hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, eos_token_id=None,
            pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    model = tilesim.load(str(tmp_path / "chatglm"), device=tilesim.Device("tiny", cores=tp), tp=tp)
    assert model.checkpoint.config.model_type == "chatglm" and model.graph.kv_heads == 3
    out = model.generate([PROMPT], max_new_tokens=16, eos_token_id=None)
    greedy_rule(out.tokens[0], gen.sequences[0, len(PROMPT) :].tolist(), [s[0].numpy() for s in gen.logits], 1e-4,
                f"chatglm layout tp{tp}")  # fmt: skip
    glm = tilesim.load(str(tiny_model("glm")), device=tilesim.Device("tiny", cores=tp), tp=tp)
    assert out.tokens[0].tolist() == glm.generate([PROMPT], max_new_tokens=16, eos_token_id=None).tokens[0].tolist()
    assert not marker.exists(), "the checkpoint's own code never runs"


def test_remote_code_for_an_unknown_architecture_is_refused_naming_it(tmp_path):
    folder = tmp_path / "baichuan"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "baichuan", "architectures": ["BaichuanForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
    }))  # fmt: skip
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"BaichuanForCausalLM.*never runs a checkpoint's code"):
        tilesim.load(str(folder), device="tiny", tp=1)
    with pytest.raises(CheckpointError, match="chatglm, glm"):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_the_named_chatglm2_config_has_its_published_size_and_runs_timing_only():
    model = tilesim.load("chatglm2-6b", device="trn1", tp=8, timing_only=True, max_context=1024)
    assert model.checkpoint.config.params == pytest.approx(6.24e9, rel=0.01)  # THUDM: "6.2B parameters"
    assert (model.graph.heads, model.graph.kv_heads, model.graph.head_dim) == (32, 2, 128)
    out = model.generate([[0] * 128], max_new_tokens=4)
    assert out.report["ttft_s"] > 0 and out.report["tpot_s"]["mean"] > 0
