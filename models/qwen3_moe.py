"""Qwen3-MoE: Qwen3's attention (an RMS norm over each query and key head, grouped-query,
rotary) with a sparse mixture of SwiGLU experts as the MLP of every `decoder_sparse_step`-th
layer but those in `mlp_only_layers`, which keep one MLP of `intermediate_size`. The router is
Mixtral's, except that the k chosen experts' probabilities are rescaled to sum to one only
with `norm_topk_prob`. Weight names as `save_pretrained` writes `Qwen3MoeForCausalLM`
(`mlp.gate` is the router, `mlp.experts.{e}.gate_proj/up_proj/down_proj` the experts)."""

from __future__ import annotations

import dataclasses

from tilesim.errors import CheckpointError
from tilesim.models import llama, mixtral
from tilesim.models.config import HFConfig, ModelConfig
from tilesim.models.decoder import build_graph
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("qwen3_moe",)
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    # the Hub's configs say num_experts; transformers 5 saves it as num_local_experts
    experts = int(c.get("num_experts", "num_local_experts"))
    if experts != c.get("num_local_experts", default=experts):
        raise CheckpointError(
            f"{c.where}: 'num_experts' {experts} and 'num_local_experts' {c.get('num_local_experts')} disagree"
        )
    k = mixtral.experts_per_token(c, experts, "num_experts", default=8)
    layers, step = int(c.get("num_hidden_layers")), c.get("decoder_sparse_step", default=1)
    only = c.get("mlp_only_layers", default=[])
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise CheckpointError(f"{c.where}: 'decoder_sparse_step' is {step!r}; it must be a whole number of at least 1")
    if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
        raise CheckpointError(f"{c.where}: 'mlp_only_layers' is {only!r}; it must be a list of layer numbers")
    dense = tuple(i for i in range(layers) if i in only or (i + 1) % step)
    renormalize = c.get("norm_topk_prob", default=False)
    if not isinstance(renormalize, bool):
        raise CheckpointError(f"{c.where}: 'norm_topk_prob' is {renormalize!r}; it must be true or false")
    base = llama.config_from_hf(c)  # Qwen3's attention: head norms, no biases unless attention_bias
    return dataclasses.replace(
        base,
        arch="qwen3_moe",
        intermediate=int(c.get("moe_intermediate_size")),
        experts=experts,
        experts_per_token=k,
        renormalize_experts=renormalize,
        dense_layers=dense,
        dense_intermediate=int(c.get("intermediate_size")) if dense else 0,
    )


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    refs = llama.weight_refs(cfg, names)  # attention, norms, head, and the dense layers' MLP
    for i in range(cfg.layers):
        if i in cfg.dense_layers:
            continue
        for part in ("gate", "up", "down"):  # the dense MLP the experts replace
            del refs[f"layers.{i}.{part}.weight"], refs[f"layers.{i}.{part}.bias"]
        mlp = f"model.layers.{i}.mlp."
        refs[f"layers.{i}.router.weight"] = WeightRef(mlp + "gate.weight")
        for e in range(cfg.experts):
            for part in ("gate", "up", "down"):
                refs[f"layers.{i}.experts.{e}.{part}.weight"] = WeightRef(f"{mlp}experts.{e}.{part}_proj.weight")
    return refs
