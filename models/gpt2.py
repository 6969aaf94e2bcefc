"""GPT-2: learned positions, layer norm, GELU (tanh), fused QKV stored by `Conv1D` as (in, out),
tied embeddings."""

from __future__ import annotations

import numpy as np

from tilesim.errors import CheckpointError
from tilesim.models.config import HFConfig, ModelConfig
from tilesim.models.decoder import build_graph
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("gpt2",)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_exact", "relu": "relu"}
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    act = c.get("activation_function", default="gelu_new")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{c.where}: activation_function {act!r} is not supported for gpt2")
    if c.get("scale_attn_by_inverse_layer_idx", default=False):
        raise CheckpointError(f"{c.where}: scale_attn_by_inverse_layer_idx=true is not supported")
    hidden, heads = int(c.get("n_embd")), int(c.get("n_head"))
    scale = 0.0 if c.get("scale_attn_weights", default=True) else 1.0
    return ModelConfig(
        arch="gpt2",
        model_type="gpt2",
        vocab_size=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("n_layer")),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=int(c.get("n_inner", default=4 * hidden)),
        max_positions=int(c.get("n_positions")),
        norm="layer",
        norm_eps=float(c.get("layer_norm_epsilon", default=1e-5)),
        activation=ACTIVATIONS[act],
        positions="learned",
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        attention_scale=scale,
        bos_token_id=c.get("bos_token_id", default=None),
        eos_token_ids=c.eos_ids(),
        pad_token_id=c.get("pad_token_id", default=None),
    )


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    pre = "transformer." if "transformer.wte.weight" in names else ""
    h = cfg.hidden
    refs = {
        "embed.weight": WeightRef(f"{pre}wte.weight"),
        "pos.weight": WeightRef(f"{pre}wpe.weight"),
        "final_norm.weight": WeightRef(f"{pre}ln_f.weight"),
        "final_norm.bias": WeightRef(f"{pre}ln_f.bias"),
    }
    for i in range(cfg.layers):
        p, ours = f"{pre}h.{i}.", f"layers.{i}."
        for part, offset in (("q", 0), ("k", h), ("v", 2 * h)):  # c_attn is [q | k | v] along its outputs
            rows = np.arange(h) + offset
            refs[f"{ours}{part}.weight"] = WeightRef(p + "attn.c_attn.weight", transpose=True, rows_map=rows)
            refs[f"{ours}{part}.bias"] = WeightRef(p + "attn.c_attn.bias", rows_map=rows)
        for ours_name, theirs, transpose in (
            ("norm1", "ln_1", False),
            ("o", "attn.c_proj", True),
            ("norm2", "ln_2", False),
            ("up", "mlp.c_fc", True),
            ("down", "mlp.c_proj", True),
        ):
            refs[f"{ours}{ours_name}.weight"] = WeightRef(f"{p}{theirs}.weight", transpose=transpose)
            refs[f"{ours}{ours_name}.bias"] = WeightRef(f"{p}{theirs}.bias")
    return refs
