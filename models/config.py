"""What tilesim needs to know about a decoder, read from a HF `config.json` (or GGUF metadata).

`ModelConfig` is one frozen description shared by every architecture; each architecture's
module fills it from its own config keys (`from_hf`). Reading a key that is missing, or a
setting tilesim does not implement, raises `CheckpointError` naming the key.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilesim.device.kernels.rotary import rope_inv_freq
from tilesim.errors import CheckpointError, TilesimWarning
from tilesim.runtime.checks import LARGEST


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # llama | gpt2 | opt | gptj | gpt_neox
    model_type: str  # as the checkpoint says (llama, mistral, qwen2, ...)
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_positions: int
    norm: str  # "rms" | "layer"
    norm_eps: float
    activation: str  # "swiglu" | "gelu_tanh" | "gelu_exact" | "relu"
    positions: str  # "rope" | "learned" | "alibi"
    rope_style: str = "neox"  # "neox" | "gptj"
    rotary_dim: int = 0
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()  # sorted (key, value) pairs of the rope parameters beyond theta
    position_offset: int = 0  # OPT's learned positions start at row 2
    parallel_residual: bool = False
    shared_layernorm: bool = False  # GPT-J: one norm feeds both branches
    qkv_bias: bool = False
    qk_norm: bool = False  # Qwen3: an RMS norm over each query and key head before the rotation
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    embed_norm: bool = False  # BLOOM: a layer norm right after the embedding
    experts: int = 0  # a sparse mixture of SwiGLU experts instead of one MLP (Mixtral); 0: dense
    experts_per_token: int = 0
    renormalize_experts: bool = True  # the k chosen experts' weights rescaled to sum to 1 (Qwen3-MoE: a switch)
    dense_layers: tuple[int, ...] = ()  # layers with one SwiGLU MLP of `dense_intermediate` among the experts' layers
    dense_intermediate: int = 0
    sliding_window: int = 0
    attention_scale: float = 0.0  # 0: 1/sqrt(head_dim)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def scale(self) -> float:
        return self.attention_scale or 1.0 / math.sqrt(self.head_dim)

    @property
    def params(self) -> int:
        """Number of weights (embedding counted once when tied)."""
        h, i, v = self.hidden, self.intermediate, self.vocab_size
        attn = h * (self.heads * self.head_dim) * 2 + h * (self.kv_heads * self.head_dim) * 2
        mlp = (3 if self.activation == "swiglu" else 2) * h * i
        if self.experts:
            mlp = self.experts * (3 * h * i + h)  # every expert and the router
        if self.arch == "rwkv":  # time mix: key, value, receptance, output; channel mix: key, value, receptance
            attn, mlp = 4 * h * h, 2 * h * i + h * h
        norms = (2 if self.norm == "layer" else 1) * h * 2
        embed = v * h * (1 if self.tie_embeddings else 2)
        dense = len(self.dense_layers) * (3 * h * self.dense_intermediate - mlp)  # one MLP instead of the experts
        return self.layers * (attn + mlp + norms) + dense + embed

    def rotary(self, positions: int) -> tuple[np.ndarray, float]:
        """The rotary inverse frequencies (fp32) of a run over `positions` positions, with any
        rope scaling applied, and the factor the cos and sin tables are multiplied by (YaRN's
        attention scaling; 1 otherwise). Only a run that computes asks: the times do not depend
        on them, so a timing-only run takes any rope type."""
        base = rope_inv_freq(self.rotary_dim, self.rope_theta)
        scaling = dict(self.rope_scaling)
        kind = scaling.get("rope_type", "default")
        if kind == "default":
            return base, 1.0
        if kind == "dynamic":  # transformers' frequencies are the plain ones up to max_position_embeddings
            if positions > self.max_positions:
                raise CheckpointError(
                    f"dynamic rope scaling changes its frequencies past the config's {self.max_positions} positions "
                    f"as a sequence grows (transformers recomputes them step by step), and a run of {positions} "
                    f"positions goes past them; tilesim computes it within them (max_context <= "
                    f"{self.max_positions}), and a timing-only run takes any context"
                )
            return base, 1.0
        if kind == "linear":
            return (base / np.float32(_rope_number(scaling, "factor", None, 0, above=True))).astype(np.float32), 1.0
        if kind == "llama3":
            return _llama3_inv_freq(base, scaling), 1.0
        if kind == "yarn":
            return _yarn(self.rotary_dim, self.rope_theta, scaling, self.max_positions)
        if kind == "factors":  # a GGUF's rope_freqs.weight, one divisor per frequency
            return (base / np.asarray(scaling["factors"], dtype=np.float32)).astype(np.float32), 1.0
        raise CheckpointError(
            f"rope scaling {kind!r} is not supported (supported: default, linear, llama3, yarn, and dynamic "
            "within the config's positions); "
            "a timing-only run takes it (its times do not depend on the frequencies)"
        )

    @property
    def yarn_positions(self) -> int:
        """The positions YaRN scaling extends the context to (`factor` x the original context,
        as `_yarn` reads them), 0 without YaRN. Never raises: a timing-only run takes a YaRN
        config it would not compute, and `rotary` says what is wrong with it."""
        scaling = dict(self.rope_scaling)
        factor = scaling.get("factor")
        original = scaling.get("original_max_position_embeddings") or self.max_positions
        if scaling.get("rope_type") != "yarn" or not all(_finite_number(v) for v in (factor, original)):
            return 0
        extended = factor * original
        return int(extended) if math.isfinite(extended) and extended > 0 else 0


def _finite_number(value: object) -> bool:
    """A finite int or float of a config (a bool is not a number there)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rope_number(s: dict, key: str, default: float | None, least: float, above: bool = False) -> float | None:
    """`s[key]` of a rope scaling, `default` if absent or null (a required key has none),
    refused unless a finite number of at least `least` (more than it, if `above`)."""
    kind, value = s.get("rope_type"), s.get(key)
    if value is None:
        if default is None and key in _REQUIRED.get(kind, {}):
            raise CheckpointError(f"{kind} rope scaling needs {key!r} ({_REQUIRED[kind][key]})")
        return default
    if not _finite_number(value) or value < least or (above and value == least):
        bound = f"more than {least:g}" if above else f"of at least {least:g}"
        raise CheckpointError(f"{kind} rope scaling: {key!r} is {value!r}; it must be a number {bound}")
    return float(value)


_REQUIRED = {
    "linear": {"factor": "the positions' divisor, e.g. 2.0"},
    "llama3": {
        "factor": "the low frequencies' divisor, e.g. 8.0",
        "low_freq_factor": "e.g. 1.0",
        "high_freq_factor": "e.g. 4.0",
        "original_max_position_embeddings": "the pretrained context, e.g. 8192",
    },
    "yarn": {"factor": "the context's extension, e.g. 4.0"},
}


def _llama3_inv_freq(inv_freq: np.ndarray, s: dict) -> np.ndarray:
    factor, low, high = (
        _rope_number(s, k, None, 0, above=True) for k in ("factor", "low_freq_factor", "high_freq_factor")
    )
    old = _rope_number(s, "original_max_position_embeddings", None, 1)
    if high < low:
        raise CheckpointError(f"llama3 rope scaling: 'high_freq_factor' {high:g} is below 'low_freq_factor' {low:g}")
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > old / low, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
    smooth = ((old / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(rot: int, theta: float, s: dict, max_positions: int) -> tuple[np.ndarray, float]:
    """YaRN (arXiv 2309.00071) as transformers computes it: each frequency interpolated
    (divided by `factor`), extrapolated (kept), or a linear ramp between the two over the
    dimensions whose wavelengths fall between beta_fast and beta_slow rotations of the
    original context; cos and sin scaled by 0.1 ln(factor) + 1 (or the given attention_factor)."""
    if "factor" not in s:
        raise CheckpointError(f"yarn rope scaling needs 'factor' ({_REQUIRED['yarn']['factor']})")
    original = _rope_number(s, "original_max_position_embeddings", max_positions, 1)
    factor = _rope_number(s, "factor", max_positions / original, 1)  # null: transformers' ratio of the contexts
    attention = _rope_number(s, "attention_factor", None, 0)
    if attention is None:
        mscale, mscale_all = _rope_number(s, "mscale", None, 0), _rope_number(s, "mscale_all_dim", None, 0)
        if mscale and mscale_all:
            attention = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        else:
            attention = _yarn_mscale(factor)
    fast, slow = _rope_number(s, "beta_fast", None, 0) or 32.0, _rope_number(s, "beta_slow", None, 0) or 1.0
    if theta == 1:  # its frequencies are all 1: no dimension makes a given number of turns
        raise CheckpointError("yarn rope scaling needs a rope_theta other than 1")

    def dim_of(rotations: float) -> float:  # the dimension whose wavelength makes `rotations` turns
        return rot * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(fast), dim_of(slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(rot // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    extrapolated = (np.float32(1) - ramp).astype(np.float32)
    powers = (np.float32(theta) ** (np.arange(0, rot, 2, dtype=np.float32) / np.float32(rot))).astype(np.float32)
    kept = (np.float32(1) / powers).astype(np.float32)
    interpolated = (np.float32(1) / (np.float32(factor) * powers)).astype(np.float32)
    inv_freq = interpolated * (np.float32(1) - extrapolated) + kept * extrapolated
    return inv_freq.astype(np.float32), float(attention)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


_COUNTS = (
    "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads", "n_head",
    "num_key_value_heads", "intermediate_size", "ffn_dim", "n_inner", "max_position_embeddings", "n_positions",
    "head_dim", "word_embed_proj_dim", "rotary_dim", "num_layers", "ffn_hidden_size", "kv_channels",
    "multi_query_group_num", "padded_vocab_size", "seq_length", "n_head", "n_embed", "num_experts",
    "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
)  # fmt: skip


# A model with more layers than this is no published one (Llama-3-405B has 126) and its
# graph would take hours to build (1e9 layers hung); other sizes as the caller's counts.
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
MAX_LAYERS = 1024
MAX_SIZE = LARGEST
# the rotary base is raised to powers: 0 gives infinite frequencies, and NaN positions
_BASES = ("rope_theta", "rotary_emb_base", "rope_ratio")


# epsilons and bases read as floats: a string or a negative value would fail later as a
# ValueError, or as NaN in the first step
_REALS = (
    "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "layernorm_epsilon", "rope_theta", "rotary_emb_base",
    "partial_rotary_factor", "rope_ratio",
)  # fmt: skip

_FLAGS = (
    "tie_word_embeddings", "attention_bias", "mlp_bias", "enable_bias", "use_parallel_residual", "add_qkv_bias",
)  # fmt: skip


class HFConfig:
    """Reads keys of a config.json, raising CheckpointError that names the file and the key."""

    def __init__(self, raw: dict[str, Any], where: str):
        if not isinstance(raw, dict):
            raise CheckpointError(f"{where}: a config must be a JSON object of fields, not {type(raw).__name__}")
        self.raw = raw
        self.where = where
        for key in _COUNTS:  # a zero or negative size would fail later as a division or a shape
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CheckpointError(f"{where}: {key!r} is {value!r}; it must be a whole number of at least 1")
            most = MAX_LAYERS if key in _LAYERS else MAX_SIZE
            if value is not None and value > most:
                raise CheckpointError(f"{where}: {key!r} is {value!r}; it must be at most {most:,}")
        for key in _REALS:
            value = raw.get(key)
            base = key in _BASES
            if value is not None and not (_finite_number(value) and (value > 0 if base else value >= 0)):
                bound = "a rotary base must be a number more than 0" if base else "it must be a number of at least 0"
                raise CheckpointError(f"{where}: {key!r} is {value!r}; {bound}")
        for key in _FLAGS:  # bool("no") is True: a string would switch on a bias the file does not hold
            flag = raw.get(key)
            if flag is not None and not isinstance(flag, bool):
                raise CheckpointError(f"{where}: {key!r} is {flag!r}; it must be true or false")
        for key in ("rope_parameters", "rope_scaling"):
            if raw.get(key) is not None and not isinstance(raw[key], dict):
                raise CheckpointError(f"{where}: {key!r} is {raw[key]!r}; it must be an object of rotary parameters")
        heads, kv = raw.get("num_attention_heads"), raw.get("num_key_value_heads")
        if heads is not None and kv is not None and heads % kv:
            raise CheckpointError(
                f"{where}: 'num_key_value_heads' is {kv}, which does not divide 'num_attention_heads' {heads}: "
                "each key/value head serves a whole group of query heads"
            )
        self._eos = checked_eos(raw.get("eos_token_id"), raw.get("vocab_size"), where)

    def get(self, *keys: str, default: Any = ...) -> Any:
        for key in keys:
            if key in self.raw and self.raw[key] is not None:
                return self.raw[key]
        if default is ...:
            raise CheckpointError(f"{self.where}: missing {' or '.join(repr(k) for k in keys)}")
        return default

    def rope(self) -> tuple[float, dict[str, Any]]:
        """(theta, other rope parameters) from `rope_parameters` (transformers 5) or the
        older `rope_theta` / `rope_scaling` keys."""
        params = dict(self.raw.get("rope_parameters") or {})
        legacy = dict(self.raw.get("rope_scaling") or {})
        if "type" in legacy and "rope_type" not in legacy:
            legacy["rope_type"] = legacy.pop("type")
        params = {**params, **legacy}  # as transformers reads a config with both: the older key's scaling wins
        if params.get("rope_type") in ("llama3", "yarn", "longrope"):
            # the pretrained context: a top-level field wins (Phi-3 keeps it there), as in transformers
            top = self.raw.get("original_max_position_embeddings")
            if top is not None:
                params["original_max_position_embeddings"] = top
        theta = params.pop("rope_theta", self.raw.get("rope_theta", self.raw.get("rotary_emb_base", 10000.0)))
        if isinstance(theta, bool) or not isinstance(theta, int | float) or not (math.isfinite(theta) and theta > 0):
            raise CheckpointError(f"{self.where}: rope_theta is {theta!r}; a rotary base must be a number more than 0")
        return float(theta), params

    def eos_ids(self) -> tuple[int, ...]:
        return self._eos


def checked_eos(eos: Any, vocab: Any, where: str) -> tuple[int, ...]:
    """The end-of-sequence ids of an `eos_token_id` field (an id, a list of them or None),
    refusing what is not ids and warning of ids past the vocabulary."""
    ids = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"{where}: 'eos_token_id' is {eos!r}; it must be a token id or a list of them")
    outside = [i for i in ids if isinstance(vocab, int) and i >= vocab]
    if outside:  # transformers loads it too; its runs never stop there
        warnings.warn(
            f"{where}: 'eos_token_id' {outside[0]} is outside the vocabulary of {vocab} ids: no step can "
            "produce it, so no run stops there",
            TilesimWarning,
            stacklevel=3,
        )
    return tuple(ids)


def scaling_tuple(params: dict[str, Any]) -> tuple:
    kept = {k: v for k, v in params.items() if k not in ("partial_rotary_factor",)}
    if kept.get("rope_type", "default") == "default":
        return ()
    return tuple(sorted(kept.items()))
