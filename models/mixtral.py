"""Mixtral: the Llama family's attention (grouped-query, rotary, RMS norm, optional sliding
window) with a sparse mixture of SwiGLU experts as the MLP: a router picks
`num_experts_per_tok` of `num_local_experts` experts per token (device/kernels/moe.py). Weight
names as `save_pretrained` writes `MixtralForCausalLM` (`block_sparse_moe.gate` is the router;
each expert's `w1` is its gate, `w3` its up and `w2` its down projection)."""

from __future__ import annotations

import dataclasses
import re

from tilesim.errors import CheckpointError
from tilesim.models import llama
from tilesim.models.config import HFConfig, ModelConfig
from tilesim.models.decoder import build_graph
from tilesim.models.weights import WeightRef

MODEL_TYPES = ("mixtral",)
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    experts = int(c.get("num_local_experts"))
    k = experts_per_token(c, experts, "num_local_experts", default=2)
    base = llama.config_from_hf(c)
    return dataclasses.replace(
        base,
        arch="mixtral",
        experts=experts,
        experts_per_token=k,
        sliding_window=int(c.get("sliding_window", default=0) or 0),
    )


def experts_per_token(c: HFConfig, experts: int, name: str, default: int) -> int:
    """A config's `num_experts_per_tok`, refused unless within its `experts` (named `name`)."""
    k = int(c.get("num_experts_per_tok", default=default))
    if not 1 <= k <= experts:
        raise CheckpointError(f"{c.where}: num_experts_per_tok={k} must be between 1 and {name}={experts}")
    return k


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    dense = re.compile(r"^layers\.\d+\.(gate|up|down)\.")  # the dense MLP the experts replace
    refs = {k: v for k, v in llama.weight_refs(cfg, names).items() if not dense.match(k)}
    for i in range(cfg.layers):
        moe = f"model.layers.{i}.block_sparse_moe."
        refs[f"layers.{i}.router.weight"] = WeightRef(moe + "gate.weight")
        for e in range(cfg.experts):
            for ours, theirs in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                refs[f"layers.{i}.experts.{e}.{ours}.weight"] = WeightRef(f"{moe}experts.{e}.{theirs}.weight")
    return refs
