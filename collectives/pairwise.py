"""Pairwise-exchange all-to-all: in round s = 1 .. p-1 core i sends its block for core i+s
and receives core i-s's block for it.

Core i's input of n elements is cut into p blocks (`bounds(n, p)`); block j goes to core j.
Core i's result holds, for every source j in core order, source j's block i, so it has
p * |block i| elements. No reduction. Time on a switch (sends leave one after another
through the uplink; each round is a permutation), b = largest block in bytes:
  alpha + (p-1) b beta
"""

from __future__ import annotations

import math

from tilesim.collectives.cost import AlphaBeta
from tilesim.collectives.schedule import Local, Recv, Schedule, Send, bounds, empty_schedule

OPS = ("alltoall",)


def build(op: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    b = bounds(n, p)
    size = [b[j + 1] - b[j] for j in range(p)]
    sched = empty_schedule(op, "pairwise", p, n, [n] * p, [p * size[i] for i in range(p)])
    for i in range(p):
        steps = sched.steps[i]
        steps.append(Local("copy", "out", i * size[i], "in", b[i], size[i]))
        for s in range(1, p):
            dst = (i + s) % p
            steps.append(Send(dst, "in", b[dst], b[dst + 1], (s, i)))
        for s in range(1, p):
            src = (i - s) % p
            steps.append(Recv(src, "out", src * size[i], (src + 1) * size[i], (s, src), False))
    sched.order = "no reduction: block i of every core, in core order"
    return sched


def predict(op: str, p: int, n: int, itemsize: int, m: AlphaBeta, root: int = 0) -> float:
    if p <= 1 or n == 0:
        return 0.0
    return m.overhead + m.alpha + (p - 1) * math.ceil(n / p) * itemsize * m.beta
