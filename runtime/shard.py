"""Tensor parallelism as a separate pass over a built graph (Megatron-style, as gpt-fast's tp.py).

- Q, K, V and the MLP's up/gate projections split by output features (attention ones by
  whole heads); the attention output and MLP down projections split by input features,
  and the pass inserts an all-reduce after each (then adds the bias, once).
- The embedding and the LM head split the vocabulary: each core looks up (or scores) its
  slice; the embedding's partial rows are all-reduced, the logits gathered.
- Query heads must divide by the degree; key/value heads either divide by it or, when there
  are fewer of them than cores, are replicated (each core keeps the one its queries use).
- Splits that are not about heads (MLP width, vocabulary) may be uneven.
- With `pad_heads`, a model whose heads do not divide by the degree runs anyway, padded with
  zero heads as transformers-neuronx's shard-over-heads does (their projections are zero
  rows, their output columns zero, so the numbers do not change):
  - at least as many key/value heads as cores: key/value heads (each with its group of
    query heads) are added up to a multiple of the degree: Llama-2-13b's 40 heads become 64
    on 32 cores;
  - fewer key/value heads than cores: every core holds one key/value head (replicated over
    the cores that share it) and the same number of query heads, each query group padded to
    fill its cores: Llama-2-70b's 64 query / 8 key/value heads on 24 cores hold 3 query heads
    per core, 72 in all.
  The padded heads cost real work, and the report says how much.
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
    # param -> per core rows (cols) held when padding makes them more than the range read
    local_rows: dict[str, list[int]] = field(default_factory=dict)
    local_cols: dict[str, list[int]] = field(default_factory=dict)
    # value -> (blocks, factor) for the exchange buffers of expert parallel, whose rows are
    # blocks * ceil(m / tp) * factor for a step of m token rows (`value_rows`)
    row_rules: dict[str, tuple[int, int]] = field(default_factory=dict)

    def value_rows(self, name: str, rows: int) -> int:
        """The rows value `name` holds in a step of `rows` token rows."""
        rule = self.row_rules.get(name)
        return rows if rule is None else rule[0] * -(-rows // self.tp) * rule[1]

    def local_shape(self, param: str, shape: tuple[int, ...], core: int) -> tuple[int, ...]:
        lo, hi = self.rows[param][core]
        rows = self.local_rows[param][core] if param in self.local_rows else hi - lo
        if len(shape) == 1:
            return (rows,)
        col = self.cols[param][core]
        cols = (
            self.local_cols[param][core] if param in self.local_cols else shape[1] if col is None else col[1] - col[0]
        )
        return (rows, cols)

    def padded(self, param: str) -> bool:
        """Whether some core holds zero rows or columns of `param` beyond what it reads."""
        return param in self.local_rows or param in self.local_cols


def plan(graph: DecoderGraph, tp: int, granule: int = 1, pad_heads: bool = False, moe: str = "tp") -> ShardPlan:
    """Split `graph` over `tp` cores; raises ShardingError when the heads do not allow it
    (unless `pad_heads`, for models whose key/value heads equal their query heads).

    `moe`: how a mixture of experts is split: "tp" (every expert over every core, by its
    width) or "ep" (whole experts on cores: E / tp experts each, or each expert over tp / E
    cores; `_expert_parallel`).

    Feature splits that are not by heads fall on multiples of `granule` where the width
    allows (32 keeps llama.cpp's blocks of 32 weights whole on one core).
    """
    if tp < 1:
        raise ShardingError(f"the tensor-parallel degree must be at least 1, got {tp}")
    q_heads, kv_heads, heads, per_core = _head_split(graph, tp, pad_heads)
    sp = ShardPlan(tp, heads, q_heads, kv_heads, {}, {}, {})
    real = {False: graph.heads, True: graph.kv_heads}

    def head_ranges(heads: tuple[int, int], kv: bool) -> list[tuple[int, int]]:
        """Each core's range of real heads, in features (clipped: padding reads nothing)."""
        _, d = heads
        return [(min(lo, real[kv]) * d, min(hi, real[kv]) * d) for lo, hi in (kv_heads if kv else q_heads)]

    def head_width(heads: tuple[int, int], kv: bool) -> list[int]:
        """Each core's features of those heads, padding included."""
        return [per_core[kv] * heads[1]] * tp

    def even(n: int) -> list[tuple[int, int]]:
        unit = granule if n % granule == 0 and n // granule >= tp else 1
        b = [x * unit for x in bounds(n // unit, tp)]
        return [(b[c], b[c + 1]) for c in range(tp)]

    def value_ranges(name: str) -> list[tuple[int, int]]:
        v = graph.values[name]
        return head_ranges(v.heads, v.kv) if v.heads else even(v.width)

    for name, v in graph.values.items():
        if v.split == "out":
            sp.widths[name] = head_width(v.heads, v.kv) if v.heads else [hi - lo for lo, hi in value_ranges(name)]
        else:
            sp.widths[name] = [v.width] * tp

    for node in graph.nodes:
        for param in node.params:
            spec = graph.params[param]
            full = [(0, spec.shape[0])] * tp
            sp.cols[param] = [None] * tp
            if spec.split == "out":
                sp.rows[param] = head_ranges(spec.heads, spec.kv) if spec.heads else even(spec.shape[0])
                if spec.heads and _wider(sp.rows[param], head_width(spec.heads, spec.kv)):
                    sp.local_rows[param] = head_width(spec.heads, spec.kv)
            elif spec.split == "vocab":
                sp.rows[param] = even(spec.shape[0])
            elif spec.split == "cols":
                sp.rows[param] = full
                sp.cols[param] = even(spec.shape[1])
            elif spec.split == "in" and len(spec.shape) == 2:
                sp.rows[param] = full
                sp.cols[param] = value_ranges(node.inputs[0])
                if graph.values[node.inputs[0]].heads and _wider(sp.cols[param], sp.widths[node.inputs[0]]):
                    sp.local_cols[param] = sp.widths[node.inputs[0]]
            else:
                sp.rows[param] = full
    if moe == "ep":
        mixtures = [node for node in graph.nodes if node.op == "moe"]
        if not mixtures:
            raise ShardingError(f"moe='ep' places whole experts on cores, but {graph.label} has no experts")
        for node in mixtures:
            _expert_parallel(sp, graph, node, tp)
    elif moe != "tp":
        raise ShardingError(f"moe={moe!r}: use tp (experts split by width) or ep (whole experts on cores)")
    sp.nodes = _with_collectives(graph, tp)
    if moe == "ep" and tp > 1:
        sp.nodes = _exchanged(sp, graph, sp.nodes)
    return sp


def _expert_parallel(sp: ShardPlan, graph: DecoderGraph, node: Node, tp: int) -> None:
    """Whole experts on cores: core c holds experts c E/tp .. (c+1) E/tp - 1 (E >= tp), or a
    width slice of expert c // (tp/E) (tp > E). Cores hold empty slices of the others."""
    n, width = node.attrs["experts"], node.attrs["width"]
    if not (n % tp == 0 or tp % n == 0):
        raise ShardingError(
            f"{graph.label}: {n} experts cannot be placed whole on {tp} cores (expert parallel needs the experts to "
            f"divide by the cores or the reverse); use moe='tp' or a degree such as "
            f"{', '.join(map(str, _ep_degrees(n)))}"
        )
    for e in range(n):
        gate, up, down = node.params[1 + 3 * e : 4 + 3 * e]
        if n >= tp:
            owner = e // (n // tp)
            spans = [(0, width) if c == owner else (0, 0) for c in range(tp)]
        else:
            group = tp // n
            part = _split(width, group)
            spans = [part[c % group] if c // group == e else (0, 0) for c in range(tp)]
        sp.rows[gate] = sp.rows[up] = spans
        sp.cols[down] = spans


def _exchanged(sp: ShardPlan, graph: DecoderGraph, nodes: list[Node]) -> list[Node]:
    """Expert parallel with token exchange: each `moe` and the all-reduce after it become
    route-and-pack (`moe_dispatch`, on each core's own block of ceil(m / tp) rows), an
    `alltoall`, the held experts (`moe_experts`), an `alltoall` back, `moe_combine` and an
    `allgather` of the cores' row blocks (device/kernels/moe.py)."""
    tp = sp.tp
    out: list[Node] = []
    skip = False
    for node in nodes:
        if skip:  # the all-reduce that completed the width-split partial sums
            skip = False
            continue
        if node.op != "moe":
            out.append(node)
            continue
        k, hidden = node.attrs["k"], graph.params[node.params[0]].shape[1]
        owners = [[c for c in range(tp) if sp.rows[g][c][1] > sp.rows[g][c][0]] for g in node.params[1::3]]
        held = [sum(c in cores for cores in owners) for c in range(tp)]
        per = max(min(k, h) for h in held)  # pairs per row one destination can get
        base = node.out.split("#")[0]
        names = {kind: f"{base}.{kind}#{node.out.split('#')[1]}" for kind in ("send", "recv", "done", "back", "own")}
        exchanged = {"send": hidden + 2, "recv": hidden + 2, "done": hidden, "back": hidden}
        shapes = [(kind, width, (tp, per)) for kind, width in exchanged.items()] + [("own", hidden, (1, 1))]
        for kind, width, rule in shapes:
            sp.widths[names[kind]] = [width] * tp
            sp.row_rules[names[kind]] = rule
        sp.row_rules[node.out] = (tp, 1)
        attrs = dict(node.attrs, per=per, owners=owners, held=held)
        layer = node.layer
        out += [
            Node("moe_dispatch", names["send"], node.inputs, node.params[:1], attrs, layer, "mlp"),
            Node("alltoall", names["recv"], (names["send"],), (), {}, layer, "collective"),
            Node("moe_experts", names["done"], (names["recv"],), node.params[1:], attrs, layer, "mlp"),
            Node("alltoall", names["back"], (names["done"],), (), {}, layer, "collective"),
            Node("moe_combine", names["own"], (names["back"],), (), attrs, layer, "mlp"),
            Node("allgather", node.out, (names["own"],), (), {}, layer, "collective"),
        ]
        skip = True
    return out


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    b = bounds(n, parts)
    return [(b[i], b[i + 1]) for i in range(parts)]


def _ep_degrees(n: int) -> list[int]:
    return sorted({d for d in range(1, n + 1) if n % d == 0} | {n * 2, n * 4})


def _wider(ranges: list[tuple[int, int]], widths: list[int]) -> bool:
    """Whether some core holds more (zero-padded) features than the range it reads."""
    return any(hi - lo != w for (lo, hi), w in zip(ranges, widths, strict=True))


def _head_split(graph: DecoderGraph, tp: int, pad_heads: bool):
    """(query head ranges, key/value head ranges, (query, key/value) heads after padding,
    {False: query heads per core, True: key/value heads per core}). Ranges are of head
    indices in the padded layout when padding appends heads, and of real heads otherwise."""
    nh, nkv = graph.heads, graph.kv_heads
    if nh == 0:  # no attention (RWKV): nothing is split by heads
        return [(0, 0)] * tp, [(0, 0)] * tp, (0, 0), {False: 0, True: 0}
    group = nh // nkv
    if nh % tp == 0 and (nkv % tp == 0 or tp % nkv == 0):
        per = nh // tp
        q = [(c * per, (c + 1) * per) for c in range(tp)]
        if nkv % tp == 0:
            kv = [(c * nkv // tp, (c + 1) * nkv // tp) for c in range(tp)]
        else:  # fewer key/value heads than cores: replicate each over tp / nkv cores
            kv = [(c * nkv // tp, c * nkv // tp + 1) for c in range(tp)]
        return q, kv, (nh, nkv), {False: per, True: kv[0][1] - kv[0][0]}
    if not pad_heads:
        ok = ", ".join(str(d) for d in valid_degrees(nh, nkv))
        kv_text = f" and {nkv} key/value heads" if nkv != nh else ""
        raise ShardingError(
            f"{graph.label} has {nh} attention heads{kv_text}, which cannot be split over {tp} cores; "
            f"use a tensor-parallel degree of {ok}, or pad heads (`pad_heads`)"
        )
    if nkv >= tp:  # add key/value heads, each with a group of zero query heads, up to a multiple of tp
        per_kv = -(-nkv // tp)
        per_q = per_kv * group
        q = [(c * per_q, (c + 1) * per_q) for c in range(tp)]
        kv = [(c * per_kv, (c + 1) * per_kv) for c in range(tp)]
        return q, kv, (per_q * tp, per_kv * tp), {False: per_q, True: per_kv}
    # fewer key/value heads than cores: core c holds key/value head owner[c] and the same
    # number of query heads, its share of that head's group (zero heads where it runs out)
    owner = [c * nkv // tp for c in range(tp)]
    cores_of = [owner.count(k) for k in range(nkv)]
    per_q = max(-(-group // n) for n in cores_of)
    q, kv = [], []
    for c in range(tp):
        k = owner[c]
        j = c - owner.index(k)  # the core's place among the cores of head k
        lo, hi = k * group + min(j * per_q, group), k * group + min((j + 1) * per_q, group)
        q.append((lo, hi))
        kv.append((k, k + 1))
    return q, kv, (per_q * tp, nkv), {False: per_q, True: 1}


def _with_collectives(graph: DecoderGraph, tp: int) -> list[Node]:
    """The graph's nodes with the communication made explicit.

    A row-parallel `linear` loses its bias (added by a `bias` node after an `allreduce`);
    `embed` and `moe` are followed by an `allreduce`; `lm_head` by `gather_logits`.
    """
    out: list[Node] = []
    for node in graph.nodes:
        if node.op == "linear" and node.attrs["split"] == "in":
            weight, *bias = node.params
            out.append(Node("linear", node.out, node.inputs, (weight,), dict(node.attrs), node.layer, node.op_type))
            out.append(Node("allreduce", node.out, (node.out,), (), {}, node.layer, "collective"))
            if bias:
                out.append(Node("bias", node.out, (node.out,), tuple(bias), {}, node.layer, node.op_type))
        elif node.op in ("embed", "moe"):  # partial sums: the cores' vocabulary slices, their expert slices
            out.append(node)
            out.append(Node("allreduce", node.out, (node.out,), (), {}, node.layer, "collective"))
        elif node.op == "lm_head":
            out.append(node)
            out.append(Node("gather_logits", node.out, (node.out,), (), {}, node.layer, "collective"))
        else:
            out.append(node)
    return out
