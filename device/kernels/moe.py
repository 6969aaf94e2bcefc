"""A sparse mixture-of-experts MLP (Mixtral): a router picks `k` experts per token, each a
SwiGLU MLP, and their outputs are summed with the router's weights.

Routing is Mixtral's: a softmax over the router's logits in fp32, the k most probable
experts, their probabilities renormalised to sum to one. The experts' products run through
the same kernels as every linear (`quant.linear_group`, any storage format); each core
holds a slice of every expert's intermediate width (transformers-neuronx shards experts the
same way), so a core's output is a partial sum that an all-reduce completes.

The cost is data-independent, as the device's is a static program: a step of m token rows
reads the router and, in expectation under uniform routing, E (1 - (1 - k/E)^m) experts'
weights (all of them for a long prefill, about k for one token), and does k experts' work
per row.
"""

from __future__ import annotations

import numpy as np

from tilesim.device.cost import KernelCost
from tilesim.device.kernels import activations, quant


def route(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, k) expert indices, most probable first, and their renormalised weights (fp32)."""
    x = logits.astype(np.float32)
    p = np.exp(x - x.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(p, idx, axis=-1)
    return idx, (w / w.sum(axis=-1, keepdims=True)).astype(np.float32)


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
) -> KernelCost:
    """Router 2 m E H FLOPs, experts 6 m k (held / E) H I (gate, up and down of width I on
    this core, for the share of routed rows that reach the `held` experts it holds: all E
    when experts are split by width); the router's weights and the held experts that the step
    touches read once (3 H I each); x in, out written, each routed row's gate and up."""
    held = experts_n if held is None else held
    share = held / experts_n
    n_touched = touched(experts_n, k, m) * share
    flops = 2.0 * m * experts_n * hidden + 6.0 * m * k * share * hidden * width
    weights = experts_n * hidden * router_bytes_per_elem + n_touched * 3 * hidden * width * weight_bytes_per_elem
    acts = (2 * m * hidden + 3 * m * k * share * width) * act_bytes
    rows_per_expert = max(1, round(m * k * share / max(n_touched, 1e-9)))
    return KernelCost(
        "moe", "matmul", flops, dtype, {"weights": weights, "activations": acts},
        shape=(rows_per_expert, width, hidden), variant=variant,
    )  # fmt: skip
