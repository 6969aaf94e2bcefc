"""GLM, ChatGLM2 and ChatGLM3: RMS norm, multi-query groups (grouped-query attention), Q, K
and V with biases, rotary embedding on the first half of each head in neighbouring pairs
(GPT-J's "rotate every two"), and a SwiGLU MLP whose gate and up projections are one fused
matrix (gate rows first).

Two checkpoint layouts map onto the same graph:
- `model_type: glm`, as `save_pretrained` writes `GlmForCausalLM` (`model.layers.N.self_attn.
  q_proj`, `mlp.gate_up_proj`, ...);
- `model_type: chatglm`, THUDM's ChatGLM2/3 releases (`transformer.encoder.layers.N.
  self_attention.query_key_value` holding Q, then K, then V; `mlp.dense_h_to_4h` holding
  gate then up; config fields `multi_query_group_num`, `kv_channels`, `ffn_hidden_size`,
  `padded_vocab_size`, `seq_length`). Their config names remote code (`auto_map`); tilesim
  never runs it: this module is what reads them.

The first ChatGLM-6B (`model_type: chatglm` with `position_encoding_2d`) has another block:
layer norms, a GELU MLP of `inner_hidden_size`, biases everywhere, rotary over two halves of
each head (token position and block position) and residuals scaled by sqrt(2 * layers). Its
config maps onto the shared template for timing (those differences cost no product and no
byte that matters); its weights are refused, since the template does not compute that block.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tilesim.errors import CheckpointError
from tilesim.models.config import HFConfig, ModelConfig, scaling_tuple
from tilesim.models.decoder import build_graph
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("glm", "chatglm")
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    if c.get("model_type") == "chatglm" and c.get("position_encoding_2d", default=False):
        return _chatglm_v1(c)
    if c.get("model_type") == "chatglm":
        return _chatglm(c)
    act = c.get("hidden_act", default="silu")
    if act != "silu":
        raise CheckpointError(f"{c.where}: hidden_act {act!r} is not supported for glm (only silu)")
    hidden, heads = int(c.get("hidden_size")), int(c.get("num_attention_heads"))
    head_dim = int(c.get("head_dim", default=hidden // heads))
    theta, rope = c.rope()
    partial = float(rope.get("partial_rotary_factor", c.get("partial_rotary_factor", default=0.5)))
    return _config(
        c,
        "glm",
        vocab=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("num_hidden_layers")),
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads", default=heads)),
        head_dim=head_dim,
        intermediate=int(c.get("intermediate_size")),
        positions=int(c.get("max_position_embeddings")),
        eps=float(c.get("rms_norm_eps", default=1e-5)),
        rotary=int(head_dim * partial),
        theta=theta,
        scaling=scaling_tuple(rope),
        bias=bool(c.get("attention_bias", default=True)),
        tie=bool(c.get("tie_word_embeddings", default=False)),
    )


def _chatglm(c: HFConfig) -> ModelConfig:
    for key, wanted in (("rmsnorm", True), ("apply_residual_connection_post_layernorm", False),
                        ("post_layer_norm", True), ("original_rope", True)):  # fmt: skip
        if bool(c.get(key, default=wanted)) != wanted:
            raise CheckpointError(f"{c.where}: ChatGLM with {key}={not wanted} is not supported")
    hidden, heads = int(c.get("hidden_size")), int(c.get("num_attention_heads"))
    head_dim = int(c.get("kv_channels", default=hidden // heads))
    groups = heads
    if c.get("multi_query_attention", default=False):
        groups = int(c.get("multi_query_group_num", default=heads))
    return _config(
        c,
        "chatglm",
        vocab=int(c.get("padded_vocab_size", "vocab_size")),
        hidden=hidden,
        layers=int(c.get("num_layers")),
        heads=heads,
        kv_heads=groups,
        head_dim=head_dim,
        intermediate=int(c.get("ffn_hidden_size")),
        positions=int(c.get("seq_length")),
        eps=float(c.get("layernorm_epsilon", default=1e-5)),
        rotary=head_dim // 2,
        theta=10000.0 * float(c.get("rope_ratio", default=1.0)),
        scaling=(),
        bias=bool(c.get("add_qkv_bias", default=True)),
        tie=False,
    )


def _chatglm_v1(c: HFConfig) -> ModelConfig:
    hidden, heads = int(c.get("hidden_size")), int(c.get("num_attention_heads"))
    cfg = _config(
        c,
        "chatglm",
        vocab=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("num_layers")),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=int(c.get("inner_hidden_size")),
        positions=int(c.get("max_sequence_length")),
        eps=float(c.get("layernorm_epsilon", default=1e-5)),
        rotary=hidden // heads,
        theta=10000.0,
        scaling=(),
        bias=True,
        tie=False,
    )
    cfg = replace(cfg, norm="layer", activation="gelu_tanh", rope_style="neox", o_bias=True, mlp_bias=True)
    cfg.extra["timing_only"] = "ChatGLM-6B v1 (2-D rotary positions, residuals scaled by sqrt(2 * layers))"
    return cfg


def _config(c: HFConfig, model_type: str, *, vocab, hidden, layers, heads, kv_heads, head_dim, intermediate,
            positions, eps, rotary, theta, scaling, bias, tie) -> ModelConfig:  # fmt: skip
    if heads % kv_heads:
        raise CheckpointError(f"{c.where}: {heads} attention heads do not divide into {kv_heads} groups")
    return ModelConfig(
        arch="glm",
        model_type=model_type,
        vocab_size=vocab,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        max_positions=positions,
        norm="rms",
        norm_eps=eps,
        activation="swiglu",
        positions="rope",
        rope_style="gptj",
        rotary_dim=rotary,
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=bias,
        o_bias=False,
        mlp_bias=False,
        tie_embeddings=tie,
        bos_token_id=c.get("bos_token_id", default=None),
        eos_token_ids=c.eos_ids(),
        pad_token_id=c.get("pad_token_id", default=None),
    )


def _rows(lo: int, n: int) -> np.ndarray:
    return np.arange(lo, lo + n)


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    if "timing_only" in cfg.extra:
        raise CheckpointError(
            f"{cfg.extra['timing_only']} runs timing-only in tilesim (timing_only=True, or a named config such as "
            "chatglm-6b); its weights are not supported: ChatGLM2/3 and GLM checkpoints are"
        )
    if cfg.model_type == "chatglm":
        return _chatglm_refs(cfg)
    refs = {"embed.weight": WeightRef("model.embed_tokens.weight"), "final_norm.weight": WeightRef("model.norm.weight")}
    if not cfg.tie_embeddings:
        refs["lm_head.weight"] = WeightRef("lm_head.weight")
    f = cfg.intermediate
    for i in range(cfg.layers):
        hf = f"model.layers.{i}."
        refs[f"layers.{i}.norm1.weight"] = WeightRef(hf + "input_layernorm.weight")
        refs[f"layers.{i}.norm2.weight"] = WeightRef(hf + "post_attention_layernorm.weight")
        for ours in ("q", "k", "v", "o"):
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(f"{hf}self_attn.{ours}_proj.weight")
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(f"{hf}self_attn.{ours}_proj.bias")
        refs[f"layers.{i}.gate.weight"] = WeightRef(hf + "mlp.gate_up_proj.weight", rows_map=_rows(0, f))
        refs[f"layers.{i}.up.weight"] = WeightRef(hf + "mlp.gate_up_proj.weight", rows_map=_rows(f, f))
        refs[f"layers.{i}.down.weight"] = WeightRef(hf + "mlp.down_proj.weight")
    return refs


def _chatglm_refs(cfg: ModelConfig) -> dict[str, WeightRef]:
    refs = {
        "embed.weight": WeightRef("transformer.embedding.word_embeddings.weight"),
        "final_norm.weight": WeightRef("transformer.encoder.final_layernorm.weight"),
        "lm_head.weight": WeightRef("transformer.output_layer.weight"),
    }
    q, kv, f = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate
    for i in range(cfg.layers):
        p = f"transformer.encoder.layers.{i}."
        fused = p + "self_attention.query_key_value."
        refs[f"layers.{i}.norm1.weight"] = WeightRef(p + "input_layernorm.weight")
        refs[f"layers.{i}.norm2.weight"] = WeightRef(p + "post_attention_layernorm.weight")
        for ours, rows in (("q", _rows(0, q)), ("k", _rows(q, kv)), ("v", _rows(q + kv, kv))):
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(fused + "weight", rows_map=rows)
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(fused + "bias", rows_map=rows)
        refs[f"layers.{i}.o.weight"] = WeightRef(p + "self_attention.dense.weight")
        refs[f"layers.{i}.gate.weight"] = WeightRef(p + "mlp.dense_h_to_4h.weight", rows_map=_rows(0, f))
        refs[f"layers.{i}.up.weight"] = WeightRef(p + "mlp.dense_h_to_4h.weight", rows_map=_rows(f, f))
        refs[f"layers.{i}.down.weight"] = WeightRef(p + "mlp.dense_4h_to_h.weight")
    return refs
