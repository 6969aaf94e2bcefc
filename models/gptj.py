"""GPT-J: rotary embedding on the first `rotary_dim` features of each head, pairs of
neighbouring features ("rotate every two"); attention and MLP in parallel from one layer
norm; untied LM head with a bias."""

from __future__ import annotations

from tilesim.errors import CheckpointError
from tilesim.models.config import HFConfig, ModelConfig
from tilesim.models.decoder import build_graph
from tilesim.models.gpt2 import ACTIVATIONS
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("gptj",)
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    hidden, heads = int(c.get("n_embd")), int(c.get("n_head"))
    act = c.get("activation_function", default="gelu_new")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{c.where}: activation_function {act!r} is not supported for gptj")
    head_dim = hidden // heads
    return ModelConfig(
        arch="gptj",
        model_type="gptj",
        vocab_size=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("n_layer")),
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        intermediate=int(c.get("n_inner", default=4 * hidden)),
        max_positions=int(c.get("n_positions")),
        norm="layer",
        norm_eps=float(c.get("layer_norm_epsilon", default=1e-5)),
        activation=ACTIVATIONS[act],
        positions="rope",
        rope_style="gptj",
        rotary_dim=int(c.get("rotary_dim", default=head_dim)),
        rope_theta=10000.0,
        parallel_residual=True,
        shared_layernorm=True,
        mlp_bias=True,
        lm_head_bias=True,
        tie_embeddings=False,
        bos_token_id=c.get("bos_token_id", default=None),
        eos_token_ids=c.eos_ids(),
        pad_token_id=c.get("pad_token_id", default=None),
    )


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    refs = {
        "embed.weight": WeightRef("transformer.wte.weight"),
        "final_norm.weight": WeightRef("transformer.ln_f.weight"),
        "final_norm.bias": WeightRef("transformer.ln_f.bias"),
        "lm_head.weight": WeightRef("lm_head.weight"),
        "lm_head.bias": WeightRef("lm_head.bias"),
    }
    parts = {
        "norm1": "ln_1",
        "q": "attn.q_proj",
        "k": "attn.k_proj",
        "v": "attn.v_proj",
        "o": "attn.out_proj",
        "up": "mlp.fc_in",
        "down": "mlp.fc_out",
    }
    for i in range(cfg.layers):
        for ours, theirs in parts.items():
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(f"transformer.h.{i}.{theirs}.weight")
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(f"transformer.h.{i}.{theirs}.bias")
    return refs
