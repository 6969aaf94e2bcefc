"""The decoder as a graph of ops with sharding annotations, before it is split over cores.

An architecture (models/) builds a `DecoderGraph` with a `GraphBuilder`: a list of `Node`s in
execution order over named values, and the `ParamSpec` of every weight. Values are
(tokens, width) activations; a node's `op` is one of `OPS`. Annotations say how the
tensor-parallel pass (`runtime/shard.py`) may split each weight and value:
- a `linear` with `split="out"` is column-parallel (each core computes some output
  features; for attention projections, whole heads), its output is sharded;
- a `linear` with `split="in"` is row-parallel: it takes a sharded input, each core computes
  a partial sum, and the pass adds an all-reduce (then the bias, once);
- `embed` and `lm_head` are vocabulary-parallel;
- everything else runs replicated on every core, or on each core's own heads.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

OPS = (
    "embed",  # ids -> rows of the table (vocabulary-parallel)
    "add_positions",  # x + table[positions + offset] (learned positions)
    "norm",  # layer or RMS norm
    "linear",  # x @ W.T + b
    "head_norm",  # RMS norm over each head's features (Qwen3's q_norm and k_norm)
    "rope",  # rotate q and k in place
    "attention",  # causal attention over the KV cache, writes the cache
    "act",  # gelu / relu / silu
    "swiglu",  # silu(gate) * up
    "add",  # residual sum
    "select_last",  # each sequence's last valid row (before the LM head in prefill)
    "lm_head",  # x @ E.T (+ b) over a vocabulary slice
)


@dataclass(frozen=True)
class ParamSpec:
    """A weight in canonical orientation: matrices are (out features, in features).

    `split` is "none" (replicated), "out" (rows), "in" (columns, as the input value is
    split), "cols" (columns, split evenly: an expert's down projection, whose input is inside
    its op) or "vocab" (rows of an embedding or LM head). `heads=(n, head_dim)` makes an "out" split follow whole heads.
    """

    name: str
    shape: tuple[int, ...]
    split: str = "none"
    heads: tuple[int, int] | None = None
    kv: bool = False  # key/value projection: may be replicated when there are fewer heads than cores


@dataclass(frozen=True)
class Value:
    """An activation: `width` features per token; `split` like the params that produce it."""

    name: str
    width: int
    split: str = "none"  # "none" | "out" (sharded features) | "partial" (needs an all-reduce)
    heads: tuple[int, int] | None = None
    kv: bool = False


@dataclass
class Node:
    """One op: `out = op(inputs, params; attrs)`; `op_type` groups it in reports."""

    op: str
    out: str | None
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    attrs: dict[str, Any]
    layer: int | None
    op_type: str


@dataclass
class DecoderGraph:
    """A whole decoder: nodes in order, values, params, and facts the runtime needs."""

    name: str
    nodes: list[Node]
    values: dict[str, Value]
    params: dict[str, ParamSpec]
    input: str
    output: str
    layers: int
    vocab_size: int
    heads: int
    kv_heads: int
    head_dim: int
    max_positions: int
    hidden: int  # the residual stream's width
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The model as its user named it ("smollm2", "llama-2-70b", a folder's name) once a
        checkpoint has opened it, else its architecture ("llama"): what errors call it."""
        return self.meta.get("label", self.name)


class GraphBuilder:
    """Builds a DecoderGraph op by op; each method returns the name of the value it makes."""

    def __init__(
        self,
        name: str,
        *,
        vocab_size: int,
        hidden: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        layers: int,
        max_positions: int,
    ):
        self.name = name
        self.vocab_size, self.hidden = vocab_size, hidden
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.layers, self.max_positions = layers, max_positions
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.params: dict[str, ParamSpec] = {}
        self._layer: int | None = None
        self._count = 0

    @contextmanager
    def layer(self, index: int):
        self._layer = index
        try:
            yield
        finally:
            self._layer = None

    def _value(self, hint: str, width: int, split: str = "none", heads=None, kv: bool = False) -> str:
        self._count += 1
        prefix = f"L{self._layer}." if self._layer is not None else ""
        name = f"{prefix}{hint}#{self._count}"
        self.values[name] = Value(name, width, split, heads, kv)
        return name

    def _param(self, name: str, shape: tuple[int, ...], split: str = "none", heads=None, kv: bool = False) -> str:
        self.params[name] = ParamSpec(name, shape, split, heads, kv)
        return name

    def _node(self, op, out, inputs, params, op_type, **attrs) -> str | None:
        self.nodes.append(Node(op, out, tuple(inputs), tuple(params), attrs, self._layer, op_type))
        return out

    # -- ops ---------------------------------------------------------------------------

    def embed(self, table: str) -> str:
        self._param(table, (self.vocab_size, self.hidden), "vocab")
        out = self._value("embed", self.hidden)
        return self._node("embed", out, ["ids"], [table], "embedding")

    def add_positions(self, x: str, table: str, rows: int, offset: int = 0) -> str:
        self._param(table, (rows, self.hidden))
        out = self._value("pos", self.hidden)
        return self._node("add_positions", out, [x], [table], "embedding", offset=offset)

    def norm(self, x: str, weight: str, bias: str | None, kind: str, eps: float) -> str:
        self._param(weight, (self.hidden,))
        params = [weight]
        if bias:
            params.append(self._param(bias, (self.hidden,)))
        out = self._value(kind, self.hidden)
        return self._node("norm", out, [x], params, "norm", kind=kind, eps=eps)

    def linear(
        self,
        x: str,
        weight: str,
        bias: str | None,
        out_features: int,
        *,
        split: str,
        op_type: str,
        heads: tuple[int, int] | None = None,
        kv: bool = False,
        hint: str = "linear",
    ) -> str:
        in_features = self.values[x].width
        self._param(weight, (out_features, in_features), split, heads, kv)
        params = [weight]
        if bias:
            # A row-parallel layer's bias is added once, after the all-reduce: not split.
            self._param(bias, (out_features,), "out" if split == "out" else "none", heads, kv)
            params.append(bias)
        value_split = "out" if split == "out" else ("partial" if split == "in" else "none")
        out = self._value(hint, out_features, value_split, heads, kv)
        return self._node("linear", out, [x], params, op_type, split=split, kernel=hint)

    def head_norm(self, x: str, weight: str, eps: float) -> str:
        """RMS norm of each head of `x` (a q, k or v value) over its head_dim features, one weight
        of head_dim shared by the heads: a value split as `x` is, no communication."""
        v = self.values[x]
        self._param(weight, (self.head_dim,))
        out = self._value("head_norm", v.width, v.split, v.heads, v.kv)
        return self._node("head_norm", out, [x], [weight], "attention", eps=eps)

    def rope(self, q: str, k: str, *, style: str, rot: int, rotary: Callable[[int], tuple[Any, float]]) -> None:
        """`rotary(positions)`: (inverse frequencies, cos/sin scale) of a run over that many
        positions, called by runs that compute."""
        self._node("rope", None, [q, k], [], "attention", style=style, rot=rot, rotary=rotary)

    def attention(self, q: str, k: str, v: str, *, scale: float, window: int = 0, alibi=None) -> str:
        """`alibi`: ALiBi slopes, one per (real) query head, or None."""
        out = self._value("attn", self.heads * self.head_dim, "out", (self.heads, self.head_dim))
        return self._node("attention", out, [q, k, v], [], "attention", scale=scale, window=window, alibi=alibi)

    def moe(
        self, x: str, router: str, experts: list[tuple[str, str, str]], *, k: int, width: int, renormalize: bool = True
    ) -> str:
        """A sparse MoE MLP: `router` (E, hidden) replicated; each expert's gate and up
        (width, hidden) split by rows and its down (hidden, width) by columns, so every core
        holds a slice of every expert and makes a partial sum (all-reduced). `renormalize`:
        the k chosen experts' probabilities rescaled to sum to one (Mixtral), or kept as the
        softmax over all experts gave them."""
        self._param(router, (len(experts), self.hidden))
        for gate, up, down in experts:
            self._param(gate, (width, self.hidden), "out")
            self._param(up, (width, self.hidden), "out")
            self._param(down, (self.hidden, width), "cols")
        out = self._value("moe", self.hidden, "partial")
        params = [router, *(p for triple in experts for p in triple)]
        return self._node(
            "moe", out, [x], params, "mlp", k=k, experts=len(experts), width=width, renormalize=renormalize
        )

    # -- RWKV's recurrent ops (device/kernels/recurrent.py) ----------------------------

    def shift(self, x: str, state: str, op_type: str) -> str:
        """Token shift of `x` (full width): each row gets the previous token's; `state` names
        the layer's state row it keeps ("att_shift" or "ffn_shift")."""
        out = self._value("shifted", self.values[x].width)
        return self._node("shift", out, [x], [], op_type, state=state)

    def mix(self, x: str, shifted: str, weight: str, op_type: str) -> str:
        width = self.values[x].width
        self._param(weight, (width,))
        out = self._value("mixed", width)
        return self._node("mix", out, [x, shifted], [weight], op_type)

    def wkv(self, k: str, v: str, time_decay: str, time_first: str) -> str:
        """The WKV recurrence over channels split like `k` (its state stays on the core)."""
        src = self.values[k]
        for name in (time_decay, time_first):
            self._param(name, (src.width,), "out")
        out = self._value("wkv", src.width, src.split)
        return self._node("wkv", out, [k, v], [time_decay, time_first], "attention")

    def mul(self, a: str, b: str, op_type: str) -> str:
        src = self.values[b]
        out = self._value("mul", src.width, src.split)
        return self._node("mul", out, [a, b], [], op_type)

    def scale(self, x: str, factor: float) -> None:
        """x *= factor, in place (RWKV's rescaling: halving is exact)."""
        self._node("scale", None, [x], [], "residual", factor=factor)

    def act(self, x: str, kind: str, op_type: str = "mlp") -> str:
        src = self.values[x]
        out = self._value(kind, src.width, src.split, src.heads)
        return self._node("act", out, [x], [], op_type, kind=kind)

    def swiglu(self, gate: str, up: str) -> str:
        src = self.values[gate]
        out = self._value("swiglu", src.width, src.split)
        return self._node("swiglu", out, [gate, up], [], "mlp")

    def add(self, a: str, b: str, op_type: str = "residual") -> str:
        out = self._value("add", self.values[a].width)
        return self._node("add", out, [a, b], [], op_type)

    def select_last(self, x: str) -> str:
        out = self._value("last", self.values[x].width)
        return self._node("select_last", out, [x], [], "lm_head")

    def lm_head(self, x: str, weight: str, bias: str | None) -> str:
        self._param(weight, (self.vocab_size, self.hidden), "vocab")
        params = [weight]
        if bias:
            params.append(self._param(bias, (self.vocab_size,), "vocab"))
        out = self._value("logits", self.vocab_size, "out")
        return self._node("lm_head", out, [x], params, "lm_head")

    def build(self, output: str, **meta: Any) -> DecoderGraph:
        return DecoderGraph(
            name=self.name,
            nodes=self.nodes,
            values=self.values,
            params=self.params,
            input="ids",
            output=output,
            layers=self.layers,
            vocab_size=self.vocab_size,
            heads=self.heads,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            max_positions=self.max_positions,
            hidden=self.hidden,
            meta=meta,
        )
