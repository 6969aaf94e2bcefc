"""What each op of a Program costs on one core for one step shape: a `KernelCost` (FLOPs, and
bytes by tensor kind) built from the kernel modules' cost functions, which the device's
roofline turns into time (`ops.OPS` names each op's cost).

A cost function gets the step timer (the sharded graph, the precision and the weights'
bytes per element), the node, the core, the rows the node runs on and the step's shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tilesim.device.cost import KernelCost
from tilesim.device.kernels.activations import activation_cost
from tilesim.device.kernels.attention import attention_cost, kv_write_cost
from tilesim.device.kernels.elementwise import add_cost, embed_cost
from tilesim.device.kernels.matmul import linear_cost
from tilesim.device.kernels.moe import combine_cost, dispatch_cost, experts_cost, moe_cost, uniform_load
from tilesim.device.kernels.norms import norm_cost
from tilesim.device.kernels.recurrent import shift_cost, wkv_cost
from tilesim.device.kernels.rotary import rope_cost
from tilesim.runtime.graph import Node

if TYPE_CHECKING:
    from tilesim.runtime.timing import StepShape, StepTimer


def linear(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    w = node.params[0]
    out_f, in_f = t.sp.local_shape(w, t.graph.params[w].shape, core)
    return linear_cost(
        rows,
        out_f,
        in_f,
        weight_bytes_per_elem=t.weight_bytes.get(w, 4.0),
        act_bytes=t.act_bytes,
        bias=len(node.params) > 1,
        dtype=t.precision.product_dtype(t.formats.get(w, "fp32")),
        name="lm_head" if node.op == "lm_head" else node.attrs["kernel"],
        variant=t.formats.get(w, "fp32"),
    )


def embed(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    width = t.sp.widths[node.out][core]
    return embed_cost(rows, width, weight_bytes=t.weight_bytes.get(node.params[0], 4.0), act_bytes=t.act_bytes)


def norm(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    width = t.sp.widths[node.out][core]
    return norm_cost(rows, width, kind=node.attrs["kind"], act_bytes=t.act_bytes, dtype=t.dtype)


def head_norm(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    """An RMS norm of rows x heads rows of head_dim features."""
    heads = t.sp.widths[node.out][core] // t.graph.head_dim
    return norm_cost(rows * heads, t.graph.head_dim, kind="head_norm", act_bytes=t.act_bytes, dtype=t.dtype)


def rope(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    width = t.sp.widths
    heads = (width[node.inputs[0]][core] + width[node.inputs[1]][core]) // t.graph.head_dim
    return rope_cost(rows, heads, node.attrs["rot"], act_bytes=t.act_bytes, dtype=t.dtype)


def attention(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    d, width, a = t.graph.head_dim, t.sp.widths, t.act_bytes
    hq, hkv = width[node.inputs[0]][core] // d, width[node.inputs[1]][core] // d
    # a prefill's query rows see (T + 1) / 2 of its own keys on average, and a chunk after
    # cached positions (context > tokens) sees those too
    cached = max(0, shape.context - shape.tokens)
    context = shape.context if shape.phase == "decode" else cached + (shape.tokens + 1) / 2
    kv = kv_write_cost(shape.batch, shape.tokens, hkv, d, act_bytes=a, kv_bytes=t.kv_itemsize)
    att = attention_cost(
        shape.batch, shape.tokens, context, hq, hkv, d, act_bytes=a, kv_bytes=t.kv_itemsize, dtype=t.dtype
    )
    traffic = {k: att.bytes.get(k, 0) + kv.bytes.get(k, 0) for k in ("kv_cache", "activations")}
    return KernelCost(
        "attention", "attention", att.flops, t.dtype, traffic, pieces=att.pieces + kv.pieces, rows=att.rows
    )


def _elements(t: StepTimer, node: Node, core: int, rows: int) -> int:
    return rows * t.sp.widths[node.out][core]


def act(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    return activation_cost(
        _elements(t, node, core, rows), kind=node.attrs["kind"], act_bytes=t.act_bytes, dtype=t.dtype
    )


def swiglu(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    n = _elements(t, node, core, rows)
    return activation_cost(n, kind="silu_mul", inputs=2, act_bytes=t.act_bytes, dtype=t.dtype)


def add(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    return add_cost(_elements(t, node, core, rows), act_bytes=t.act_bytes, dtype=t.dtype)


def select_last(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    n = shape.batch * t.sp.widths[node.out][core]
    return KernelCost("select_last", "elementwise", 0.0, t.dtype, {"activations": 2 * n * t.act_bytes})


def moe(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    router, gate = node.params[0], node.params[1]
    n = node.attrs["experts"]
    shapes = [t.sp.local_shape(g, t.graph.params[g].shape, core) for g in node.params[1::3]]
    held = [s for s in shapes if s[0]]  # the experts this core holds a slice of
    width, hidden = max(held) if held else (0, shapes[0][1])
    fmt = t.formats.get(gate, "fp32")
    counts = t.routing.get(node.layer) if t.routing else None
    routed = (float(counts.sum()), float(np.count_nonzero(counts))) if counts is not None else None
    return moe_cost(
        rows, hidden, width, n, node.attrs["k"],
        weight_bytes_per_elem=t.weight_bytes.get(gate, 4.0), router_bytes_per_elem=t.weight_bytes.get(router, 4.0),
        act_bytes=t.act_bytes, dtype=t.precision.product_dtype(fmt), variant=fmt, held=len(held), routed=routed,
    )  # fmt: skip


def moe_dispatch(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    router = node.params[0]
    n, hidden = t.graph.params[router].shape
    return dispatch_cost(-(-rows // t.sp.tp), hidden, n, node.attrs["k"], act_bytes=t.act_bytes, dtype=t.dtype,
                         router_bytes_per_elem=t.weight_bytes.get(router, 4.0))  # fmt: skip


def moe_experts(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    """A core's held experts on the pairs routed to them: as the step's data routed them
    (functional runs), else uniform with the busiest core `moe_imbalance` times its share."""
    n, k, owners = node.attrs["experts"], node.attrs["k"], node.attrs["owners"]
    mine = [e for e in range(n) if core in owners[e]]
    gate = node.params[3 * mine[0]]
    width, hidden = t.sp.local_shape(gate, t.graph.params[gate].shape, core)
    counts = t.routing.get(node.layer) if t.routing else None
    if counts is not None:
        pairs, n_touched = float(counts[mine].sum()), float(np.count_nonzero(counts[mine]))
    else:
        pairs, n_touched = uniform_load(n, k, rows, len(mine))
        pairs = min(pairs * t.moe_imbalance, float(rows * min(k, len(mine))))
    fmt = t.formats.get(gate, "fp32")
    return experts_cost(pairs, n_touched, hidden, width, weight_bytes_per_elem=t.weight_bytes.get(gate, 4.0),
                        act_bytes=t.act_bytes, dtype=t.precision.product_dtype(fmt), variant=fmt)  # fmt: skip


def moe_combine(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    n, tp = node.attrs["experts"], t.sp.tp
    partials = node.attrs["k"] * max(1, tp // n)  # pairs per row, each expert's cores' partial sums
    return combine_cost(-(-rows // tp), t.sp.widths[node.out][core], partials, act_bytes=t.act_bytes, dtype=t.dtype)


def shift(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    return shift_cost(rows, shape.batch, t.sp.widths[node.out][core], act_bytes=t.act_bytes)


def mix(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    return activation_cost(_elements(t, node, core, rows), kind="mix", inputs=2, act_bytes=t.act_bytes, dtype=t.dtype)


def wkv(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    return wkv_cost(rows, shape.batch, t.sp.widths[node.out][core], act_bytes=t.act_bytes)


def mul(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    return activation_cost(_elements(t, node, core, rows), kind="mul", inputs=2, act_bytes=t.act_bytes, dtype=t.dtype)


def scale(t: StepTimer, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost:
    n = rows * t.sp.widths[node.inputs[0]][core]
    return activation_cost(n, kind="scale", act_bytes=t.act_bytes, dtype=t.dtype)
