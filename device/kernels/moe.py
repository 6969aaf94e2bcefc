"""A sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE): a router picks `k` experts per token, each a
SwiGLU MLP, and their outputs are summed with the router's weights.

Routing is Mixtral's: a softmax over the router's logits in fp32, the k most probable
experts, their probabilities renormalised to sum to one (Qwen3-MoE may keep them as they
are). The experts' products run through the same kernels as every linear
(`quant.linear_group`, any storage format); each core holds a slice of every expert's
intermediate width (transformers-neuronx shards experts the same way), so a core's output
is a partial sum that an all-reduce completes.

Expert parallel (whole experts on cores, or one expert over a group of cores) exchanges
tokens instead: each core routes its own block of rows, `dispatch` packs the rows for each
destination core into fixed-capacity blocks (the expert id and routing weight ride along in
two extra columns; an empty slot has id -1), an all-to-all delivers them, `expert_blocks`
runs the experts a core holds on what it received, a second all-to-all brings the weighted
outputs back and `combine` adds each row's in expert order. The capacity is the worst case
(every row of a block to one core), so no token is ever dropped.

Costs: a step of m token rows reads the router and the experts it routes to (in a
functional run, from the routing the data produced; in timing-only, in expectation under
uniform routing, E (1 - (1 - k/E)^m) of them: all for a long prefill, about k for one
token), and does k experts' work per row, shared among the cores that hold them.
"""

from __future__ import annotations

import numpy as np

from tilesim.device.cost import KernelCost
from tilesim.device.kernels import activations, quant


def route(logits: np.ndarray, k: int, renormalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(rows, k) expert indices, most probable first, and their weights (fp32): the softmax's
    probabilities, renormalised to sum to one over the k (Mixtral; Qwen3-MoE's
    `norm_topk_prob`) or as they are."""
    x = logits.astype(np.float32)
    p = np.exp(x - x.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(p, idx, axis=-1)
    return idx, (w / w.sum(axis=-1, keepdims=True) if renormalize else w).astype(np.float32)


def experts(
    x: np.ndarray,
    idx: np.ndarray,
    weights: np.ndarray,
    packs: list[tuple[quant.Packed, quant.Packed, quant.Packed]],
    out: np.ndarray,
    act: str = "fp32",
) -> np.ndarray:
    """out (rows, H) = sum over each row's experts of weight * down(silu(gate(x)) * up(x)),
    expert by expert in index order (as transformers adds them)."""
    out[...] = 0.0
    for e, (gate, up, down) in enumerate(packs):
        rows, slot = np.nonzero(idx == e)
        if not len(rows) or gate.shape[0] == 0:  # not routed to, or not on this core (expert parallel)
            continue
        xe = np.ascontiguousarray(x[rows])
        width = gate.shape[0]
        g, u = np.empty((len(rows), width), np.float32), np.empty((len(rows), width), np.float32)
        quant.linear_group(xe, [gate, up], [None, None], [g, u], act)
        activations.silu_mul(g, u, g)
        y = quant.linear(g, down, None, np.empty((len(rows), out.shape[1]), np.float32), act)
        out[rows] += weights[rows, slot][:, None] * y
    return out


def dispatch(
    x: np.ndarray, idx: np.ndarray, weights: np.ndarray, owners: list[list[int]], send: np.ndarray
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Pack this core's rows `x` (rows, H) for every destination core: `send` (cores, cap,
    H + 2) gets, in block d, each (row, expert) pair whose expert core d holds (`owners[e]`:
    the cores holding expert e), with the expert id and weight in the last two columns; empty
    slots have id -1. Returns (destination, rows, slots) of every expert's pairs, experts in
    order and the cores of one expert in core order: the order `combine` adds them in."""
    hidden = x.shape[1]
    send[:, :, hidden] = -1.0
    filled = [0] * send.shape[0]
    sent: list[tuple[int, np.ndarray, np.ndarray]] = []
    for e, cores in enumerate(owners):
        rows, slot = np.nonzero(idx == e)
        if not len(rows):
            continue
        for d in cores:
            at = np.arange(filled[d], filled[d] + len(rows))
            send[d, at, :hidden] = x[rows]
            send[d, at, hidden] = e
            send[d, at, hidden + 1] = weights[rows, slot]
            filled[d] += len(rows)
            sent.append((d, rows, at))
    return sent


def expert_blocks(
    recv: np.ndarray,
    held: dict[int, tuple[quant.Packed, quant.Packed, quant.Packed]],
    out: np.ndarray,
    act: str = "fp32",
) -> None:
    """Run the experts this core holds (`held`: id -> its gate, up, down slices) on the pairs
    it received (`recv` (cores, cap, H + 2)); `out` (cores, cap, H) gets weight * expert(x)
    in the same slots (zero elsewhere)."""
    hidden = out.shape[2]
    out[...] = 0.0
    flat, into = recv.reshape(-1, recv.shape[2]), out.reshape(-1, hidden)
    ids = flat[:, hidden]
    for e, (gate, up, down) in held.items():
        slots = np.nonzero(ids == e)[0]
        if not len(slots):
            continue
        xe = np.ascontiguousarray(flat[slots, :hidden])
        width = gate.shape[0]
        g, u = np.empty((len(slots), width), np.float32), np.empty((len(slots), width), np.float32)
        quant.linear_group(xe, [gate, up], [None, None], [g, u], act)
        activations.silu_mul(g, u, g)
        y = quant.linear(g, down, None, np.empty((len(slots), hidden), np.float32), act)
        into[slots] = flat[slots, hidden + 1][:, None] * y


def combine(back: np.ndarray, sent: list[tuple[int, np.ndarray, np.ndarray]], out: np.ndarray) -> np.ndarray:
    """out (rows, H) = the sum of each row's returned pairs (`back` (cores, cap, H): block d
    came from core d), in `dispatch`'s order: expert by expert, one expert's cores in order."""
    out[...] = 0.0
    for d, rows, slots in sent:
        out[rows] += back[d, slots]
    return out


def touched(experts_n: int, k: int, rows: int) -> float:
    """Experts a step of `rows` tokens reads, in expectation under uniform routing."""
    return experts_n * (1.0 - (1.0 - k / experts_n) ** rows)


def moe_cost(
    m: int,
    hidden: int,
    width: int,
    experts_n: int,
    k: int,
    *,
    weight_bytes_per_elem: float = 4,
    router_bytes_per_elem: float = 4,
    act_bytes: int = 4,
    dtype: str = "fp32",
    variant: str = "",
    held: int | None = None,
    routed: tuple[int, float] | None = None,
) -> KernelCost:
    """Router 2 m E H FLOPs, experts 6 m k (held / E) H I (gate, up and down of width I on
    this core, for the share of routed rows that reach the `held` experts it holds: all E
    when experts are split by width); the router's weights and the held experts that the step
    touches read once (3 H I each); x in, out written, each routed row's gate and up.
    `routed` = (pairs, experts touched) on this core as the data routed them, instead of the
    uniform expectation."""
    held = experts_n if held is None else held
    pairs, n_touched = routed or uniform_load(experts_n, k, m, held)
    part = experts_cost(pairs, n_touched, hidden, width, weight_bytes_per_elem=weight_bytes_per_elem,
                        act_bytes=act_bytes, dtype=dtype, variant=variant)  # fmt: skip
    flops = 2.0 * m * experts_n * hidden + part.flops
    weights = experts_n * hidden * router_bytes_per_elem + part.bytes["weights"]
    acts = 2 * m * hidden * act_bytes + part.bytes["activations"]
    return KernelCost(
        "moe", "matmul", flops, dtype, {"weights": weights, "activations": acts}, shape=part.shape, variant=variant
    )


def uniform_load(experts_n: int, k: int, m: int, held: int) -> tuple[float, float]:
    """(pairs, experts touched) of a core holding `held` of the experts (or a slice of each
    of them), in expectation under uniform routing of m rows."""
    share = held / experts_n
    return m * k * share, touched(experts_n, k, m) * share


def experts_cost(
    pairs: float,
    n_touched: float,
    hidden: int,
    width: int,
    *,
    weight_bytes_per_elem: float = 4,
    act_bytes: int = 4,
    dtype: str = "fp32",
    variant: str = "",
) -> KernelCost:
    """The experts of one core: 6 H I FLOPs per (row, expert) pair (gate, up and down of the
    core's width I), each touched expert's three matrices read once, each pair's gate and up
    written and read."""
    rows_per_expert = max(1, round(pairs / max(n_touched, 1e-9)))
    weights = n_touched * 3 * hidden * width * weight_bytes_per_elem
    return KernelCost(
        "moe_experts", "matmul", 6.0 * pairs * hidden * width, dtype,
        {"weights": weights, "activations": 3 * pairs * width * act_bytes},
        shape=(rows_per_expert, width, hidden), variant=variant,
    )  # fmt: skip


def dispatch_cost(rows: int, hidden: int, experts_n: int, k: int, *, router_bytes_per_elem: float = 4,
                  act_bytes: int = 4, dtype: str = "fp32") -> KernelCost:  # fmt: skip
    """Route a core's block of `rows` and pack its k pairs per row: 2 rows E H FLOPs, the
    router read once, x read, the pairs (H + 2 wide) written."""
    return KernelCost(
        "moe_dispatch", "matmul", 2.0 * rows * experts_n * hidden, dtype,
        {"weights": experts_n * hidden * router_bytes_per_elem,
         "activations": (rows * hidden + rows * k * (hidden + 2)) * act_bytes},
        shape=(max(rows, 1), experts_n, hidden),
    )  # fmt: skip


def combine_cost(rows: int, hidden: int, k: int, *, act_bytes: int = 4, dtype: str = "fp32") -> KernelCost:
    """Add each of a core's rows' k returned pairs: rows k H additions, the pairs read, the rows written."""
    return KernelCost(
        "moe_combine", "elementwise", float(rows * k * hidden), dtype,
        {"activations": (rows * k * hidden + rows * hidden) * act_bytes},
    )  # fmt: skip
