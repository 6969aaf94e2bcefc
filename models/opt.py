"""OPT: learned positions offset by 2, pre-layer-norm, ReLU, biases everywhere, tied embeddings.

OPT-350m's post-norm layout and projection of the embeddings are not supported."""

from __future__ import annotations

from tilesim.errors import CheckpointError
from tilesim.models.config import HFConfig, ModelConfig
from tilesim.models.decoder import build_graph
from tilesim.models.gpt2 import ACTIVATIONS
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("opt",)
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    hidden = int(c.get("hidden_size"))
    if not c.get("do_layer_norm_before", default=True):
        raise CheckpointError(
            f"{c.where}: OPT with do_layer_norm_before=false (post-norm, as OPT-350m) is not supported"
        )
    if int(c.get("word_embed_proj_dim", default=hidden)) != hidden:
        raise CheckpointError(f"{c.where}: OPT with word_embed_proj_dim != hidden_size is not supported")
    act = c.get("activation_function", default="relu")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{c.where}: activation_function {act!r} is not supported for opt")
    heads = int(c.get("num_attention_heads"))
    bias = bool(c.get("enable_bias", default=True))
    return ModelConfig(
        arch="opt",
        model_type="opt",
        vocab_size=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("num_hidden_layers")),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=int(c.get("ffn_dim")),
        max_positions=int(c.get("max_position_embeddings")),
        norm="layer",
        norm_eps=1e-5,
        activation=ACTIVATIONS[act],
        positions="learned",
        position_offset=2,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        tie_embeddings=bool(c.get("tie_word_embeddings", default=True)),
        bos_token_id=c.get("bos_token_id", default=None),
        eos_token_ids=c.eos_ids(),
        pad_token_id=c.get("pad_token_id", default=None),
    )


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    pre = "model.decoder." if "model.decoder.embed_tokens.weight" in names else "decoder."
    refs = {
        "embed.weight": WeightRef(f"{pre}embed_tokens.weight"),
        "pos.weight": WeightRef(f"{pre}embed_positions.weight"),
        "final_norm.weight": WeightRef(f"{pre}final_layer_norm.weight"),
        "final_norm.bias": WeightRef(f"{pre}final_layer_norm.bias"),
    }
    if not cfg.tie_embeddings:
        refs["lm_head.weight"] = WeightRef("lm_head.weight")
    parts = {
        "norm1": "self_attn_layer_norm",
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.out_proj",
        "norm2": "final_layer_norm",
        "up": "fc1",
        "down": "fc2",
    }
    for i in range(cfg.layers):
        for ours, theirs in parts.items():
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(f"{pre}layers.{i}.{theirs}.weight")
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(f"{pre}layers.{i}.{theirs}.bias")
    return refs
