"""Binomial tree: all-reduce as a reduce to core 0 then a broadcast, and broadcast from any root.

Reduction order: core v adds its children's partial sums nearest first,
x[v] + s[v+1] + s[v+2] + s[v+4] + ..., where s[c] is child c's subtree sum; core 0 ends
with the full sum and the broadcast copies it unchanged.
Time on a switch (TRG05): with p a power of two and K = log2 p,
  all-reduce  K (alpha + N beta + N max(0, gamma - beta)) + K (alpha + N beta)
  broadcast   K (alpha + N beta)
for other p, `trees.reduce_time` / `trees.broadcast_time` follow the tree's exact shape.
"""

from __future__ import annotations

from tilesim.collectives import trees
from tilesim.collectives.cost import AlphaBeta
from tilesim.collectives.schedule import Local, Recv, Schedule, Send, empty_schedule, start_from_input

OPS = ("allreduce", "broadcast")


def build(op: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    root = 0 if op == "allreduce" else root
    sched = empty_schedule(op, "binomial_tree", p, n, [n] * p, [n] * p, root=root)
    parent, children = trees.relabel(trees.binomial(p), [(v + root) % p for v in range(p)])
    if op == "allreduce":
        start_from_input(sched)
        add_reduce(sched, parent, children, 0, n, step=0)
        add_broadcast(sched, parent, children, 0, n, step=1)
        sched.order = "core v: x[v] + s[v+1] + s[v+2] + s[v+4] + ... (s = a child's subtree sum), then broadcast from 0"
    else:
        sched.steps[root].append(Local("copy", "out", 0, "in", 0, n))
        add_broadcast(sched, parent, children, 0, n, step=0)
        sched.order = "no reduction: the root's vector is copied down the tree"
    return sched


def add_reduce(
    sched: Schedule, parent: list[int], children: list[list[int]], lo: int, hi: int, step: int, ch: int = 0
) -> None:
    for v in range(sched.p):
        for c in children[v]:
            sched.steps[v].append(Recv(c, "out", lo, hi, (step, "reduce", c, ch), True, ch))
        if parent[v] >= 0:
            sched.steps[v].append(Send(parent[v], "out", lo, hi, (step, "reduce", v, ch), ch))


def add_broadcast(
    sched: Schedule, parent: list[int], children: list[list[int]], lo: int, hi: int, step: int, ch: int = 0
) -> None:
    for v in range(sched.p):
        if parent[v] >= 0:
            sched.steps[v].append(Recv(parent[v], "out", lo, hi, (step, "bcast", v, ch), False, ch))
        for c in reversed(children[v]):  # farthest subtree first: it is the deepest
            sched.steps[v].append(Send(c, "out", lo, hi, (step, "bcast", c, ch), ch))


def predict(op: str, p: int, n: int, itemsize: int, m: AlphaBeta, root: int = 0) -> float:
    if p <= 1 or n == 0:
        return 0.0
    _, children = trees.binomial(p)
    nbytes = n * itemsize
    down = [list(reversed(c)) for c in children]
    if op == "broadcast":
        return m.overhead + trees.broadcast_time(down, 0, nbytes, m)
    up = trees.reduce_time(children, 0, nbytes, m)
    return m.overhead + trees.broadcast_time(down, 0, nbytes, m, start=up)
