"""The Llama family: Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3 (RMS norm, rotary, SwiGLU,
grouped-query attention, optional biases, tied or untied embeddings; Qwen3's RMS norm over each
query and key head). Weight names as `save_pretrained` writes them for `LlamaForCausalLM` and
its relatives."""

from __future__ import annotations

from tilesim.errors import CheckpointError
from tilesim.models.config import HFConfig, ModelConfig, scaling_tuple
from tilesim.models.decoder import build_graph
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    model_type = c.get("model_type")
    act = c.get("hidden_act", default="silu")
    if act != "silu":
        raise CheckpointError(f"{c.where}: hidden_act {act!r} is not supported for {model_type} (only silu)")
    hidden, heads = int(c.get("hidden_size")), int(c.get("num_attention_heads"))
    head_dim = int(c.get("head_dim", default=hidden // heads))
    theta, rope = c.rope()
    window = 0
    if model_type == "mistral":
        window = int(c.get("sliding_window", default=0) or 0)
    if model_type in _QWEN and c.get("use_sliding_window", default=False):
        raise CheckpointError(f"{c.where}: {_QWEN[model_type]} with use_sliding_window=true is not supported")
    attention_bias = bool(c.get("attention_bias", default=False))
    return ModelConfig(
        arch="llama",
        model_type=model_type,
        vocab_size=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("num_hidden_layers")),
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads", default=heads)),
        head_dim=head_dim,
        intermediate=int(c.get("intermediate_size")),
        max_positions=int(c.get("max_position_embeddings")),
        norm="rms",
        norm_eps=float(c.get("rms_norm_eps", default=1e-6)),
        activation="swiglu",
        positions="rope",
        rope_style="neox",
        rotary_dim=int(head_dim * float(rope.get("partial_rotary_factor", 1.0))),
        rope_theta=theta,
        rope_scaling=scaling_tuple(rope),
        qkv_bias=attention_bias or model_type == "qwen2",
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        o_bias=attention_bias,
        mlp_bias=bool(c.get("mlp_bias", default=False)),
        tie_embeddings=bool(c.get("tie_word_embeddings", default=False)),
        sliding_window=window,
        bos_token_id=c.get("bos_token_id", default=None),
        eos_token_ids=c.eos_ids(),
        pad_token_id=c.get("pad_token_id", default=None),
    )


_QWEN = {"qwen2": "Qwen2", "qwen3": "Qwen3", "qwen3_moe": "Qwen3-MoE"}  # their names, for their sliding window


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    refs = {"embed.weight": WeightRef("model.embed_tokens.weight"), "final_norm.weight": WeightRef("model.norm.weight")}
    if not cfg.tie_embeddings:
        refs["lm_head.weight"] = WeightRef("lm_head.weight")
    parts = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    }
    for i in range(cfg.layers):
        hf = f"model.layers.{i}."
        refs[f"layers.{i}.norm1.weight"] = WeightRef(hf + "input_layernorm.weight")
        refs[f"layers.{i}.norm2.weight"] = WeightRef(hf + "post_attention_layernorm.weight")
        for ours, theirs in parts.items():
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(f"{hf}{theirs}.weight")
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(f"{hf}{theirs}.bias")
        if cfg.qk_norm:
            refs[f"layers.{i}.q_norm.weight"] = WeightRef(hf + "self_attn.q_norm.weight")
            refs[f"layers.{i}.k_norm.weight"] = WeightRef(hf + "self_attn.k_norm.weight")
    return refs
