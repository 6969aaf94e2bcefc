"""Tree shapes shared by the tree algorithms, and the closed-form time of a tree phase.

- `binomial(p)`: rank v's parent is v - lowbit(v); its children are v + 2^k for every
  2^k below lowbit(v) (all k for the root 0), nearest first.
- `binary(p)`: the in-order binary tree of NCCL's double binary tree: rank 0 is the root with
  one child, the largest power of two below p; a rank with lowest set bit b has children
  r - b/2 and r + b', b' the largest power of two <= b/2 that stays below p. Odd ranks are
  leaves, so mirroring (even p) or shifting by one (odd p) gives a second tree whose inner
  ranks are the first tree's leaves.

Phase times assume a switch (every pair one hop): a message of m bytes holds the sender's
uplink and the receiver's downlink for m*beta and arrives alpha later; a downlink serves
messages in the order they come; a node's messages to its children leave one after another;
a node reduces its children's messages in program order, each adding m*max(0, gamma - beta)
after it arrives.
"""

from __future__ import annotations

from tilesim.collectives.cost import AlphaBeta


def lowbit(v: int) -> int:
    return v & -v


def binomial(p: int) -> tuple[list[int], list[list[int]]]:
    parent = [-1] * p
    children: list[list[int]] = [[] for _ in range(p)]
    for v in range(1, p):
        parent[v] = v - lowbit(v)
    for v in range(p):
        limit = lowbit(v) if v else 1 << max(p - 1, 1).bit_length()
        k = 1
        while k < limit and v + k < p:
            children[v].append(v + k)
            k <<= 1
    return parent, children


def binary(p: int) -> tuple[list[int], list[list[int]]]:
    parent = [-1] * p
    children: list[list[int]] = [[] for _ in range(p)]

    def link(up: int, down: int) -> None:
        parent[down] = up
        children[up].append(down)

    def build(r: int, b: int) -> None:
        half = b // 2
        if not half:
            return
        link(r, r - half)
        build(r - half, half)
        off = half
        while off and r + off >= p:
            off //= 2
        if off:
            link(r, r + off)
            build(r + off, off)

    if p > 1:
        top = 1 << ((p - 1).bit_length() - 1)
        link(0, top)
        build(top, top)
    return parent, children


def relabel(tree: tuple[list[int], list[list[int]]], rank_of: list[int]) -> tuple[list[int], list[list[int]]]:
    """The same tree with position i played by rank `rank_of[i]`."""
    parent, children = tree
    p = len(parent)
    new_parent = [-1] * p
    new_children: list[list[int]] = [[] for _ in range(p)]
    for pos in range(p):
        if parent[pos] >= 0:
            new_parent[rank_of[pos]] = rank_of[parent[pos]]
        new_children[rank_of[pos]] = [rank_of[c] for c in children[pos]]
    return new_parent, new_children


def reduce_time(children: list[list[int]], root: int, nbytes: float, m: AlphaBeta) -> float:
    """When the root holds the reduced vector, all leaves starting at 0."""
    done: dict[int, float] = {}
    order = _post_order(children, root)
    for v in order:
        # The downlink serves children first come, first served; the node then reduces
        # their messages in its program order.
        arrival = {}
        downlink_free = 0.0
        for c in sorted(children[v], key=lambda c: done[c]):
            start = max(done[c], downlink_free)
            downlink_free = start + nbytes * m.beta
            arrival[c] = downlink_free + m.alpha
        t = 0.0
        for c in children[v]:
            t = max(t, arrival[c]) + nbytes * m.streamed_gamma
        done[v] = t
    return done[root]


def broadcast_time(children: list[list[int]], root: int, nbytes: float, m: AlphaBeta, start: float = 0.0) -> float:
    """When the last node has the root's vector (and the last send has arrived)."""
    arrival = {root: start}
    last = start
    stack = [root]
    while stack:
        v = stack.pop()
        for j, c in enumerate(children[v]):
            arrival[c] = arrival[v] + (j + 1) * nbytes * m.beta + m.alpha
            last = max(last, arrival[c])
            stack.append(c)
    return last


def _post_order(children: list[list[int]], root: int) -> list[int]:
    out, stack = [], [(root, False)]
    while stack:
        v, seen = stack.pop()
        if seen:
            out.append(v)
        else:
            stack.append((v, True))
            stack.extend((c, False) for c in children[v])
    return out
