"""Tensor parallelism as a separate pass over a built graph (Megatron-style, as gpt-fast's tp.py).

- Q, K, V and the MLP's up/gate projections split by output features (attention ones by
  whole heads); the attention output and MLP down projections split by input features,
  and the pass inserts an all-reduce after each (then adds the bias, once).
- The embedding and the LM head split the vocabulary: each core looks up (or scores) its
  slice; the embedding's partial rows are all-reduced, the logits gathered.
- Query heads must divide by the degree; key/value heads either divide by it or, when there
  are fewer of them than cores, are replicated (each core keeps the one its queries use).
- Splits that are not about heads (MLP width, vocabulary) may be uneven.
- With `pad_heads`, a model whose heads do not divide by the degree gets zero heads added
  up to the next multiple (as transformers-neuronx pads them): Llama-2-13b's 40 heads
  become 64 on 32 cores. The padded heads cost real work, and the report says how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tilesim.collectives.schedule import bounds
from tilesim.errors import ShardingError
from tilesim.runtime.graph import DecoderGraph, Node


def valid_degrees(heads: int, kv_heads: int) -> list[int]:
    """The tensor-parallel degrees a model with these head counts can be split over."""
    return [d for d in range(1, heads + 1) if heads % d == 0 and (kv_heads % d == 0 or d % kv_heads == 0)]


@dataclass
class ShardPlan:
    """How `tp` cores split a graph: index ranges per core, and the nodes with collectives."""

    tp: int
    heads: tuple[int, int]  # (query heads, key/value heads) after any padding
    q_heads: list[tuple[int, int]]
    kv_heads: list[tuple[int, int]]
    rows: dict[str, list[tuple[int, int]]]  # param -> per core [lo, hi) of its first axis
    cols: dict[str, list[tuple[int, int] | None]]  # param -> per core [lo, hi) of its second axis
    widths: dict[str, list[int]]  # value -> per core local width
    nodes: list[Node] = field(default_factory=list)

    def local_shape(self, param: str, shape: tuple[int, ...], core: int) -> tuple[int, ...]:
        lo, hi = self.rows[param][core]
        if len(shape) == 1:
            return (hi - lo,)
        col = self.cols[param][core]
        return (hi - lo, shape[1] if col is None else col[1] - col[0])


def plan(graph: DecoderGraph, tp: int, granule: int = 1, pad_heads: bool = False) -> ShardPlan:
    """Split `graph` over `tp` cores; raises ShardingError when the heads do not allow it
    (unless `pad_heads`, for models whose key/value heads equal their query heads).

    Feature splits that are not by heads fall on multiples of `granule` where the width
    allows (32 keeps llama.cpp's blocks of 32 weights whole on one core).
    """
    if tp < 1:
        raise ShardingError(f"the tensor-parallel degree must be at least 1, got {tp}")
    nh, nkv = graph.heads, graph.kv_heads
    if nh % tp or (nkv % tp and tp % nkv):
        ok = ", ".join(str(d) for d in valid_degrees(nh, nkv))
        kv = f" and {nkv} key/value heads" if nkv != nh else ""
        if not pad_heads or nkv != nh:
            hint = ", or pad heads (--pad-heads)" if nkv == nh else ""
            raise ShardingError(
                f"{graph.name} has {nh} attention heads{kv}, which cannot be split over {tp} cores; "
                f"use a tensor-parallel degree of {ok}{hint}"
            )
        nh = nkv = -(-nh // tp) * tp
    per = nh // tp
    q_heads = [(c * per, (c + 1) * per) for c in range(tp)]
    if nkv % tp == 0:
        kv_heads = [(c * nkv // tp, (c + 1) * nkv // tp) for c in range(tp)]
    else:  # fewer key/value heads than cores: replicate each over tp / nkv cores
        kv_heads = [(c * nkv // tp, c * nkv // tp + 1) for c in range(tp)]
    sp = ShardPlan(tp, (nh, nkv), q_heads, kv_heads, {}, {}, {})

    def head_ranges(heads: tuple[int, int], kv: bool) -> list[tuple[int, int]]:
        _, d = heads
        return [(lo * d, hi * d) for lo, hi in (kv_heads if kv else q_heads)]

    def even(n: int) -> list[tuple[int, int]]:
        unit = granule if n % granule == 0 and n // granule >= tp else 1
        b = [x * unit for x in bounds(n // unit, tp)]
        return [(b[c], b[c + 1]) for c in range(tp)]

    def value_ranges(name: str) -> list[tuple[int, int]]:
        v = graph.values[name]
        return head_ranges(v.heads, v.kv) if v.heads else even(v.width)

    for name, v in graph.values.items():
        if v.split == "out":
            sp.widths[name] = [hi - lo for lo, hi in value_ranges(name)]
        else:
            sp.widths[name] = [v.width] * tp

    for node in graph.nodes:
        for param in node.params:
            spec = graph.params[param]
            full = [(0, spec.shape[0])] * tp
            sp.cols[param] = [None] * tp
            if spec.split == "out":
                sp.rows[param] = head_ranges(spec.heads, spec.kv) if spec.heads else even(spec.shape[0])
            elif spec.split == "vocab":
                sp.rows[param] = even(spec.shape[0])
            elif spec.split == "in" and len(spec.shape) == 2:
                sp.rows[param] = full
                sp.cols[param] = value_ranges(node.inputs[0])
            else:
                sp.rows[param] = full
    sp.nodes = _with_collectives(graph, tp)
    return sp


def _with_collectives(graph: DecoderGraph, tp: int) -> list[Node]:
    """The graph's nodes with the communication made explicit.

    A row-parallel `linear` loses its bias (added by a `bias` node after an `allreduce`);
    `embed` is followed by an `allreduce`; `lm_head` by `gather_logits`.
    """
    out: list[Node] = []
    for node in graph.nodes:
        if node.op == "linear" and node.attrs["split"] == "in":
            weight, *bias = node.params
            out.append(Node("linear", node.out, node.inputs, (weight,), dict(node.attrs), node.layer, node.op_type))
            out.append(Node("allreduce", node.out, (node.out,), (), {}, node.layer, "collective"))
            if bias:
                out.append(Node("bias", node.out, (node.out,), tuple(bias), {}, node.layer, node.op_type))
        elif node.op == "embed":
            out.append(node)
            out.append(Node("allreduce", node.out, (node.out,), (), {}, node.layer, "collective"))
        elif node.op == "lm_head":
            out.append(node)
            out.append(Node("gather_logits", node.out, (node.out,), (), {}, node.layer, "collective"))
        else:
            out.append(node)
    return out
