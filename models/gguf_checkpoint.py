"""Llama-family models stored as GGUF (llama.cpp's format): config from metadata, weight names.

llama.cpp's converter permutes the rows of the Q and K projections of `llama` models for
its interleaved rotary layout; the row maps here undo it (as transformers does when it
loads a GGUF), so the canonical weights are the Hugging Face ones.
"""

from __future__ import annotations

import math

import numpy as np

from tilesim.errors import CheckpointError
from tilesim.models.config import MAX_LAYERS, MAX_SIZE, ModelConfig
from tilesim.models.readers import GGUFTensorReader
from tilesim.models.weights import WeightRef

ARCHITECTURES = ("llama", "qwen2", "qwen3", "qwen3moe")


def config_from_gguf(reader: GGUFTensorReader) -> ModelConfig:
    arch = reader.field("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{reader.path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )

    def key(name: str, default=None):
        value = reader.field(f"{arch}.{name}", default)
        if value is None:
            raise CheckpointError(f"{reader.path}: GGUF metadata has no {arch}.{name}")
        return value

    def count(name: str, default=None) -> int:  # a size of 0 would fail later as a division
        value = key(name, default)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise CheckpointError(f"{reader.path}: GGUF {arch}.{name} is {value!r}; it must be a whole number >= 1")
        most = MAX_LAYERS if name == "block_count" else MAX_SIZE  # as a config.json's (models/config.py)
        if value > most:
            raise CheckpointError(f"{reader.path}: GGUF {arch}.{name} is {value!r}; it must be at most {most:,}")
        return int(value)

    def positive(name: str, default: float) -> float:  # a negative epsilon or base gives NaN at the first step
        value = key(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | np.number)
            or not np.isfinite(value)
            or value <= 0
        ):
            raise CheckpointError(f"{reader.path}: GGUF {arch}.{name} is {value!r}; it must be a positive number")
        return float(value)

    hidden, heads = count("embedding_length"), count("attention.head_count")
    if reader.field(f"{arch}.attention.key_length") is None and hidden % heads:
        raise CheckpointError(
            f"{reader.path}: GGUF {arch}.attention.head_count {heads} does not divide its embedding_length "
            f"{hidden}, and no attention.key_length says how wide a head is"
        )
    head_dim = count("attention.key_length", hidden // heads)  # set where heads are not hidden / head count wide
    if count("attention.value_length", head_dim) != head_dim:
        raise CheckpointError(
            f"{reader.path}: GGUF {arch}.attention.value_length differs from its key_length {head_dim}; "
            "tilesim runs heads whose keys and values are as wide"
        )
    experts = count("expert_count") if arch == "qwen3moe" or reader.field(f"{arch}.expert_count") else 0
    if experts and "blk.0.ffn_gate_exps.weight[0]" not in reader.tensors:
        raise CheckpointError(
            f"{reader.path}: a mixture-of-experts GGUF whose experts are tensors of their own (the layout of "
            "llama.cpp's converter before 2024) is not supported; convert the model again"
        )
    k = count("expert_used_count") if experts else 0
    if k > experts:
        raise CheckpointError(
            f"{reader.path}: GGUF {arch}.expert_used_count {k} is more than its expert_count {experts}"
        )
    # an expert's width: Mixtral's feed_forward_length, Qwen3-MoE's expert_feed_forward_length
    width = count("expert_feed_forward_length") if arch == "qwen3moe" else count("feed_forward_length")
    rotary_dim = count("rope.dimension_count", head_dim)
    what = f"{arch}.rope.dimension_count {rotary_dim}"
    if reader.field(f"{arch}.rope.dimension_count") is None:
        what = f"the rotary dimensions (the head's {head_dim}, no {arch}.rope.dimension_count)"
    if rotary_dim % 2:
        raise CheckpointError(f"{reader.path}: GGUF {what}: an odd number; rotary dimensions turn in pairs")
    if rotary_dim > head_dim:
        raise CheckpointError(f"{reader.path}: GGUF {what}: more than the head's {head_dim} dimensions")
    if reader.field(f"{arch}.vocab_size"):
        vocab = count("vocab_size")
    elif reader.field("tokenizer.ggml.tokens"):
        vocab = len(reader.field("tokenizer.ggml.tokens"))
    elif "token_embd.weight" in reader.tensors:
        vocab = reader.shape("token_embd.weight")[0]
    else:
        raise CheckpointError(f"{reader.path}: the GGUF has neither a vocabulary nor a token_embd.weight tensor")
    # where generation stops: the end of text, and (as llama.cpp stops) a chat model's end of turn
    # and end of message
    stops = [reader.field(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    for value in stops:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0):
            raise CheckpointError(f"{reader.path}: GGUF stop token id {value!r} is not a token id")
    return ModelConfig(
        arch="llama",
        model_type=arch,
        vocab_size=vocab,
        hidden=hidden,
        layers=count("block_count"),
        heads=heads,
        kv_heads=count("attention.head_count_kv", heads),
        head_dim=head_dim,
        intermediate=width,
        experts=experts,
        experts_per_token=k,
        max_positions=count("context_length"),
        norm="rms",
        norm_eps=positive("attention.layer_norm_rms_epsilon", 1e-6),
        activation="swiglu",
        positions="rope",
        rope_style="neox",
        rotary_dim=rotary_dim,
        rope_theta=positive("rope.freq_base", 10000.0),
        rope_scaling=_rope_scaling(reader, arch, rotary_dim, positive, count),
        qkv_bias="blk.0.attn_q.bias" in reader.tensors,
        qk_norm=arch in ("qwen3", "qwen3moe"),  # llama.cpp asks every such block for its norms, no other arch
        tie_embeddings="output.weight" not in reader.tensors,
        bos_token_id=reader.field("tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(int(v) for v in stops if v is not None)),
        pad_token_id=reader.field("tokenizer.ggml.padding_token_id"),
    )


def _rope_scaling(reader: GGUFTensorReader, arch: str, rotary_dim: int, positive, count) -> tuple:
    """The rope scaling as llama.cpp applies it: positions divided by `rope.scaling.factor` (or
    the older `rope.scale_linear`) unless `rope.scaling.type` is "none" (a file without a type
    is linear; a factor of 0, or none, means 1), and each frequency divided by its factor in
    `rope_freqs.weight` (Llama 3.1's scaling as its converter stores it) whatever the type; or
    YaRN over `rope.scaling.original_context_length` (the context length if absent), with
    llama.cpp's fixed betas (32 and 1) and cos and sin scaled by 0.1 ln(factor) + 1 times
    `rope.scaling.attn_factor`."""
    kind = reader.field(f"{arch}.rope.scaling.type", "linear")
    if kind == "yarn":
        if "rope_freqs.weight" in reader.tensors:
            raise CheckpointError(f"{reader.path}: YaRN rope scaling beside rope_freqs.weight is not supported")
        factor = positive("rope.scaling.factor", None)
        if factor < 1:
            raise CheckpointError(f"{reader.path}: GGUF {arch}.rope.scaling.factor {factor:g} is below 1 (YaRN)")
        original = count("rope.scaling.original_context_length", count("context_length"))
        attention = positive("rope.scaling.attn_factor", 1.0) * (0.1 * math.log(factor) + 1)
        return (
            ("attention_factor", attention), ("factor", factor), ("original_max_position_embeddings", original),
            ("rope_type", "yarn"),
        )  # fmt: skip
    if kind not in ("linear", "none"):
        raise CheckpointError(f"{reader.path}: GGUF rope scaling {kind!r} is not supported (supported: linear, yarn)")
    named = next(
        (n for n in ("rope.scaling.factor", "rope.scale_linear") if reader.field(f"{arch}.{n}") is not None), None
    )
    factor = 1.0
    if kind == "linear" and named is not None and reader.field(f"{arch}.{named}") != 0:
        factor = positive(named, None)
    if "rope_freqs.weight" not in reader.tensors:
        return () if factor == 1.0 else (("factor", factor), ("rope_type", "linear"))
    factors = reader.read("rope_freqs.weight", slice(None), None).reshape(-1)
    if factors.size != rotary_dim // 2:
        raise CheckpointError(
            f"{reader.path}: rope_freqs.weight holds {factors.size} factors; the rotary dimension "
            f"{rotary_dim} asks for {rotary_dim // 2}, one per frequency"
        )
    if not np.all(np.isfinite(factors) & (factors > 0)):
        raise CheckpointError(f"{reader.path}: rope_freqs.weight holds factors that are not positive numbers")
    return (("factors", tuple(float(f) * factor for f in factors)), ("rope_type", "factors"))


def unpermute_rows(heads: int, head_dim: int) -> np.ndarray:
    """For each Hugging Face row of a Q or K projection, the row llama.cpp stored it at.

    llama.cpp viewed the rows as (head, half, i) and stored them as (head, i, half).
    """
    r = np.arange(heads * head_dim)
    h, rem = np.divmod(r, head_dim)
    half, i = np.divmod(rem, head_dim // 2)
    return h * head_dim + 2 * i + half


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    refs = {"embed.weight": WeightRef("token_embd.weight"), "final_norm.weight": WeightRef("output_norm.weight")}
    if not cfg.tie_embeddings:
        refs["lm_head.weight"] = WeightRef("output.weight")
    permute = cfg.model_type == "llama"
    q_rows = unpermute_rows(cfg.heads, cfg.head_dim) if permute else None
    k_rows = unpermute_rows(cfg.kv_heads, cfg.head_dim) if permute else None
    parts = {
        "norm1": "attn_norm",
        "norm2": "ffn_norm",
        "q": "attn_q",
        "k": "attn_k",
        "v": "attn_v",
        "o": "attn_output",
        "gate": "ffn_gate",
        "up": "ffn_up",
        "down": "ffn_down",
    }
    for i in range(cfg.layers):
        for ours, theirs in parts.items():
            rows = q_rows if ours == "q" else k_rows if ours == "k" else None
            refs[f"layers.{i}.{ours}.weight"] = WeightRef(f"blk.{i}.{theirs}.weight", rows_map=rows)
            refs[f"layers.{i}.{ours}.bias"] = WeightRef(f"blk.{i}.{theirs}.bias", rows_map=rows)
        if cfg.qk_norm:  # Qwen3: per-head norms, head_dim wide, not permuted
            refs[f"layers.{i}.q_norm.weight"] = WeightRef(f"blk.{i}.attn_q_norm.weight")
            refs[f"layers.{i}.k_norm.weight"] = WeightRef(f"blk.{i}.attn_k_norm.weight")
        if cfg.experts:  # the router, and each expert's matrices out of the layer's stacks (models/readers.py)
            refs[f"layers.{i}.router.weight"] = WeightRef(f"blk.{i}.ffn_gate_inp.weight")
            for e in range(cfg.experts):
                for part in ("gate", "up", "down"):
                    refs[f"layers.{i}.experts.{e}.{part}.weight"] = WeightRef(f"blk.{i}.ffn_{part}_exps.weight[{e}]")
    return refs
