"""The decoder-only transformer that every supported architecture is an instance of.

Architectures differ in flags of `ModelConfig` (norm kind, activation, positions, parallel
residual, biases, tied embeddings); each architecture module maps its checkpoint's tensor
names to the canonical weight names used here and calls `build_graph`.

    x = embed(ids) [+ positions] [then a norm: BLOOM]
    for every layer:
        h = norm1(x)
        q, k, v = h @ Wq, h @ Wk, h @ Wv          # column-parallel, by heads
        q, k = rope(q, k)                         # when positions are rotary (ALiBi: biased scores)
        a = attention(q, k, v) @ Wo               # row-parallel: all-reduce
        sequential:  x = x + a; m = mlp(norm2(x)); x = x + m
        parallel:    m = mlp(norm2(x) or h); x = (a + m) + x   (GPT-J, GPT-NeoX)
    logits = lm_head(norm(x))                     # vocabulary-parallel
The MLP is up (column-parallel), activation, down (row-parallel); SwiGLU multiplies
silu(gate) by up; a mixture of experts (Mixtral) routes each token to k SwiGLU experts.
"""

from __future__ import annotations

import math

import numpy as np

from tilesim.models.config import ModelConfig
from tilesim.runtime.graph import DecoderGraph, GraphBuilder


def _norm(g: GraphBuilder, cfg: ModelConfig, x: str, name: str) -> str:
    bias = f"{name}.bias" if cfg.norm == "layer" else None
    return g.norm(x, f"{name}.weight", bias, "layer_norm" if cfg.norm == "layer" else "rms_norm", cfg.norm_eps)


def _mlp(g: GraphBuilder, cfg: ModelConfig, h: str, i: int) -> str:
    p, width = f"layers.{i}.", cfg.intermediate
    if cfg.experts and i not in cfg.dense_layers:
        experts = [(f"{p}experts.{e}.gate.weight", f"{p}experts.{e}.up.weight", f"{p}experts.{e}.down.weight")
                   for e in range(cfg.experts)]  # fmt: skip
        k, renormalize = cfg.experts_per_token, cfg.renormalize_experts
        return g.moe(h, f"{p}router.weight", experts, k=k, width=width, renormalize=renormalize)
    if cfg.experts:  # a dense layer among the experts' (Qwen3-MoE's mlp_only_layers)
        width = cfg.dense_intermediate
    bias = cfg.mlp_bias
    if cfg.activation == "swiglu":
        gate = g.linear(
            h,
            f"{p}gate.weight",
            f"{p}gate.bias" if bias else None,
            width,
            split="out",
            op_type="mlp",
            hint="gate",
        )
        up = g.linear(h, f"{p}up.weight", f"{p}up.bias" if bias else None, width, split="out", op_type="mlp", hint="up")
        inner = g.swiglu(gate, up)
    else:
        up = g.linear(h, f"{p}up.weight", f"{p}up.bias" if bias else None, width, split="out", op_type="mlp", hint="up")
        inner = g.act(up, cfg.activation)
    return g.linear(
        inner, f"{p}down.weight", f"{p}down.bias" if bias else None, cfg.hidden, split="in", op_type="mlp", hint="down"
    )


def alibi_slopes(heads: int) -> np.ndarray:
    """ALiBi's slope per head (Press et al.; BLOOM's `_get_alibi_slopes`): a geometric series
    from 2^(-8/n) for the largest power of two n <= heads, the rest interleaved from 2n's."""
    n = 2 ** math.floor(math.log2(heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    slopes = [base**i for i in range(1, n + 1)]
    if n != heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * n) - 3)))
        slopes += [extra**i for i in range(1, 2 * min(n, heads - n), 2)]
    return np.array(slopes, dtype=np.float32)


def build_graph(cfg: ModelConfig) -> DecoderGraph:
    g = GraphBuilder(
        cfg.model_type,
        vocab_size=cfg.vocab_size,
        hidden=cfg.hidden,
        heads=cfg.heads,
        kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        layers=cfg.layers,
        max_positions=cfg.max_positions,
    )
    x = g.embed("embed.weight")
    if cfg.embed_norm:
        x = _norm(g, cfg, x, "embed_norm")
    if cfg.positions == "learned":
        x = g.add_positions(x, "pos.weight", cfg.max_positions + cfg.position_offset, cfg.position_offset)
    rotary = cfg.rotary if cfg.positions == "rope" else None  # asked for by runs that compute, when they bind
    slopes = alibi_slopes(cfg.heads) if cfg.positions == "alibi" else None
    hq, hkv, d = cfg.heads, cfg.kv_heads, cfg.head_dim
    for i in range(cfg.layers):
        p = f"layers.{i}."
        with g.layer(i):
            h = _norm(g, cfg, x, f"{p}norm1")
            qb = cfg.qkv_bias
            q = g.linear(
                h,
                f"{p}q.weight",
                f"{p}q.bias" if qb else None,
                hq * d,
                split="out",
                op_type="attention",
                heads=(hq, d),
                hint="q",
            )
            k = g.linear(
                h,
                f"{p}k.weight",
                f"{p}k.bias" if qb else None,
                hkv * d,
                split="out",
                op_type="attention",
                heads=(hkv, d),
                kv=True,
                hint="k",
            )
            v = g.linear(
                h,
                f"{p}v.weight",
                f"{p}v.bias" if qb else None,
                hkv * d,
                split="out",
                op_type="attention",
                heads=(hkv, d),
                kv=True,
                hint="v",
            )
            if cfg.qk_norm:
                q = g.head_norm(q, f"{p}q_norm.weight", cfg.norm_eps)
                k = g.head_norm(k, f"{p}k_norm.weight", cfg.norm_eps)
            if rotary is not None:
                g.rope(q, k, style=cfg.rope_style, rot=cfg.rotary_dim, rotary=rotary)
            a = g.attention(q, k, v, scale=cfg.scale, window=cfg.sliding_window, alibi=slopes)
            o = g.linear(
                a,
                f"{p}o.weight",
                f"{p}o.bias" if cfg.o_bias else None,
                cfg.hidden,
                split="in",
                op_type="attention",
                hint="o",
            )
            if cfg.parallel_residual:
                h2 = h if cfg.shared_layernorm else _norm(g, cfg, x, f"{p}norm2")
                m = _mlp(g, cfg, h2, i)
                x = g.add(g.add(o, m), x)
            else:
                x = g.add(x, o)
                m = _mlp(g, cfg, _norm(g, cfg, x, f"{p}norm2"), i)
                x = g.add(x, m)
    x = _norm(g, cfg, x, "final_norm")
    last = g.select_last(x)
    head = "embed.weight" if cfg.tie_embeddings else "lm_head.weight"
    logits = g.lm_head(last, head, "lm_head.bias" if cfg.lm_head_bias else None)
    graph = g.build(
        logits, bos_token_id=cfg.bos_token_id, eos_token_ids=cfg.eos_token_ids, pad_token_id=cfg.pad_token_id
    )
    if cfg.experts:
        graph.meta["experts"] = (cfg.experts, cfg.experts_per_token)
    if cfg.yarn_positions:  # Qwen2.5 keeps max_position_embeddings at the pretrained 32768 and runs to 131072
        graph.meta["extended_positions"] = cfg.yarn_positions
    return graph
