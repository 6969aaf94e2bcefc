"""BLOOM: ALiBi position biases (no position embeddings; a slope per head, sliced with the
heads over the cores), a layer norm right after the word embedding, Q, K and V fused head by
head (each head's q, k, v rows together), biases everywhere, tanh-GELU, tied embeddings.
Weight names as `save_pretrained` writes `BloomForCausalLM`."""

from __future__ import annotations

import numpy as np

from tilesim.errors import CheckpointError
from tilesim.models.config import HFConfig, ModelConfig
from tilesim.models.decoder import build_graph
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("bloom",)
POSITIONS = 2048  # BLOOM was trained on 2048 tokens; ALiBi runs past it
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    hidden, heads = int(c.get("hidden_size", "n_embed")), int(c.get("n_head", "num_attention_heads"))
    if hidden % heads:
        raise CheckpointError(f"{c.where}: hidden_size {hidden} does not divide into {heads} heads")
    if c.get("apply_residual_connection_post_layernorm", default=False):
        raise CheckpointError(f"{c.where}: BLOOM with apply_residual_connection_post_layernorm=true is not supported")
    if int(c.get("pretraining_tp", default=1)) > 1 and c.get("slow_but_exact", default=False):
        raise CheckpointError(f"{c.where}: BLOOM with slow_but_exact=true is not supported")
    return ModelConfig(
        arch="bloom",
        model_type="bloom",
        vocab_size=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("n_layer", "num_hidden_layers")),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=4 * hidden,
        max_positions=int(c.get("seq_length", default=POSITIONS)),
        norm="layer",
        norm_eps=float(c.get("layer_norm_epsilon", default=1e-5)),
        activation="gelu_tanh",
        positions="alibi",
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_embeddings=bool(c.get("tie_word_embeddings", default=True)),
        embed_norm=True,
        bos_token_id=c.get("bos_token_id", default=None),
        eos_token_ids=c.eos_ids(),
        pad_token_id=c.get("pad_token_id", default=None),
    )


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    prefix = "transformer." if any(n.startswith("transformer.") for n in names) else ""
    refs = {
        "embed.weight": WeightRef(prefix + "word_embeddings.weight"),
        "embed_norm.weight": WeightRef(prefix + "word_embeddings_layernorm.weight"),
        "embed_norm.bias": WeightRef(prefix + "word_embeddings_layernorm.bias"),
        "final_norm.weight": WeightRef(prefix + "ln_f.weight"),
        "final_norm.bias": WeightRef(prefix + "ln_f.bias"),
    }
    if not cfg.tie_embeddings:
        refs["lm_head.weight"] = WeightRef("lm_head.weight")
    d = cfg.head_dim
    per_head = (np.arange(cfg.heads)[:, None] * 3 * d + np.arange(d)[None, :]).reshape(-1)  # (heads, 3, d) rows
    parts = {"o": "self_attention.dense", "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"}
    for i in range(cfg.layers):
        p = f"{prefix}h.{i}."
        fused = p + "self_attention.query_key_value."
        for ours, theirs in (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")):
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(f"{p}{theirs}.weight")
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(f"{p}{theirs}.bias")
        for j, ours in enumerate("qkv"):
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(fused + "weight", rows_map=per_head + j * d)
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(fused + "bias", rows_map=per_head + j * d)
        for ours, theirs in parts.items():
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(f"{p}{theirs}.weight")
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(f"{p}{theirs}.bias")
    return refs
