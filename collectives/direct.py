"""Direct (one-shot) algorithms: every core sends straight to every other core.

- all-reduce: each core sends its whole vector to the p-1 others, then sums all p vectors
  itself in core order, x[0] + x[1] + ... + x[p-1], so every core computes the same bits.
- reduce-scatter: core i receives chunk i from everyone and sums them in core order.
- all-gather: core i sends its chunk to everyone.
A core sends to i+1, i+2, ... in turn, so in each round the messages form a permutation.
Time on a switch (messages leave one at a time through the sender's uplink), c = largest
chunk, N = vector, both in bytes:
  all-reduce      alpha + (p-1) N beta + (p-1) N gamma
  reduce-scatter  alpha + (p-1) c beta + (p-1) c gamma
  all-gather      alpha + (p-1) c beta
On a ring or torus the messages take several hops and share links, so it takes longer.
"""

from __future__ import annotations

import math

from tilesim.collectives.cost import AlphaBeta
from tilesim.collectives.schedule import Local, Recv, Schedule, Send, bounds, empty_schedule

OPS = ("allreduce", "reducescatter", "allgather")


def build(op: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    b = bounds(n, p)
    size = [b[i + 1] - b[i] for i in range(p)]
    if op == "allgather":
        sched = empty_schedule(op, "direct", p, n, size, [n] * p)
        for i in range(p):
            steps = sched.steps[i]
            steps.append(Local("copy", "out", b[i], "in", 0, size[i]))
            for k in range(1, p):
                steps.append(Send((i + k) % p, "in", 0, size[i], (0, i)))
            for k in range(1, p):
                src = (i - k) % p
                steps.append(Recv(src, "out", b[src], b[src + 1], (0, src), False))
        sched.order = "no reduction: chunk i is copied from core i"
        return sched
    if op == "allreduce":
        sched = empty_schedule(op, "direct", p, n, [n] * p, [n] * p)
        sched.tmp_len = p * n
        for i in range(p):
            steps = sched.steps[i]
            for k in range(1, p):
                steps.append(Send((i + k) % p, "in", 0, n, (0, i)))
            for k in range(1, p):
                src = (i - k) % p
                steps.append(Recv(src, "tmp", src * n, (src + 1) * n, (0, src), False))
            _sum_in_core_order(steps, p, i, n, out_lo=0, own_lo=0)
        sched.order = "every core sums x[0] + x[1] + ... + x[p-1] in core order"
        return sched
    # reduce-scatter
    sched = empty_schedule(op, "direct", p, n, [n] * p, [n] * p)
    sched.tmp_len = p * max(size, default=0)
    slot = max(size, default=0)
    for i in range(p):
        steps = sched.steps[i]
        for k in range(1, p):
            dst = (i + k) % p
            steps.append(Send(dst, "in", b[dst], b[dst + 1], (0, dst)))
        for k in range(1, p):
            src = (i - k) % p
            steps.append(Recv(src, "tmp", src * slot, src * slot + size[i], (0, i), False))
        _sum_in_core_order(steps, p, i, size[i], out_lo=b[i], own_lo=b[i], slot=slot)
    sched.result = [(b[i], b[i + 1]) for i in range(p)]
    sched.order = "core i sums chunk i as x[0] + x[1] + ... + x[p-1] in core order"
    return sched


def _sum_in_core_order(
    steps: list, p: int, me: int, count: int, out_lo: int, own_lo: int, slot: int | None = None
) -> None:
    """out[out_lo:+count] = tmp slot 0 + slot 1 + ... (slot `me` holds this core's own part).

    The own part is copied into its slot first (before anything writes `out`), so the sum
    is right when `in` and `out` are the same buffer.
    """
    slot = count if slot is None else slot
    if count == 0:
        return
    steps.insert(0, Local("copy", "tmp", me * slot, "in", own_lo, count))
    steps.append(Local("copy", "out", out_lo, "tmp", 0, count))
    for j in range(1, p):
        steps.append(Local("reduce", "out", out_lo, "tmp", j * slot, count))


def predict(op: str, p: int, n: int, itemsize: int, m: AlphaBeta, root: int = 0) -> float:
    if p <= 1 or n == 0:
        return 0.0
    c = math.ceil(n / p) * itemsize
    big = n * itemsize
    if op == "allreduce":
        t = m.alpha + (p - 1) * big * m.beta + (p - 1) * big * m.gamma
    elif op == "reducescatter":
        t = m.alpha + (p - 1) * c * m.beta + (p - 1) * c * m.gamma
    else:
        t = m.alpha + (p - 1) * c * m.beta
    return m.overhead + t
