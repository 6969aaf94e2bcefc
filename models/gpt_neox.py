"""GPT-NeoX (Pythia): fused QKV laid out head by head, [q_h | k_h | v_h]; rotary on a fraction
of each head ("rotate half"); parallel or sequential residual; exact GELU; untied head."""

from __future__ import annotations

import numpy as np

from tilesim.errors import CheckpointError
from tilesim.models.config import HFConfig, ModelConfig, scaling_tuple
from tilesim.models.decoder import build_graph
from tilesim.models.gpt2 import ACTIVATIONS
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("gpt_neox",)
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    hidden, heads = int(c.get("hidden_size")), int(c.get("num_attention_heads"))
    act = c.get("hidden_act", default="gelu")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{c.where}: hidden_act {act!r} is not supported for gpt_neox")
    head_dim = hidden // heads
    theta, rope = c.rope()
    fraction = float(rope.get("partial_rotary_factor", c.get("rotary_pct", default=1.0)))
    bias = bool(c.get("attention_bias", default=True))
    return ModelConfig(
        arch="gpt_neox",
        model_type="gpt_neox",
        vocab_size=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("num_hidden_layers")),
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        intermediate=int(c.get("intermediate_size")),
        max_positions=int(c.get("max_position_embeddings")),
        norm="layer",
        norm_eps=float(c.get("layer_norm_eps", default=1e-5)),
        activation=ACTIVATIONS[act],
        positions="rope",
        rope_style="neox",
        rotary_dim=int(head_dim * fraction),
        rope_theta=theta,
        rope_scaling=scaling_tuple(rope),
        parallel_residual=bool(c.get("use_parallel_residual", default=True)),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=True,
        tie_embeddings=bool(c.get("tie_word_embeddings", default=False)),
        bos_token_id=c.get("bos_token_id", default=None),
        eos_token_ids=c.eos_ids(),
        pad_token_id=c.get("pad_token_id", default=None),
    )


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    refs = {
        "embed.weight": WeightRef("gpt_neox.embed_in.weight"),
        "final_norm.weight": WeightRef("gpt_neox.final_layer_norm.weight"),
        "final_norm.bias": WeightRef("gpt_neox.final_layer_norm.bias"),
    }
    if not cfg.tie_embeddings:
        refs["lm_head.weight"] = WeightRef("embed_out.weight")
    d, heads = cfg.head_dim, cfg.heads
    per_head = (np.arange(heads)[:, None] * 3 * d + np.arange(d)[None, :]).reshape(-1)
    parts = {
        "norm1": "input_layernorm",
        "norm2": "post_attention_layernorm",
        "o": "attention.dense",
        "up": "mlp.dense_h_to_4h",
        "down": "mlp.dense_4h_to_h",
    }
    for i in range(cfg.layers):
        p = f"gpt_neox.layers.{i}."
        for part, offset in (("q", 0), ("k", d), ("v", 2 * d)):
            rows = per_head + offset
            refs[f"layers.{i}.{part}.weight"] = WeightRef(p + "attention.query_key_value.weight", rows_map=rows)
            refs[f"layers.{i}.{part}.bias"] = WeightRef(p + "attention.query_key_value.bias", rows_map=rows)
        for ours, theirs in parts.items():
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(f"{p}{theirs}.weight")
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(f"{p}{theirs}.bias")
    return refs
