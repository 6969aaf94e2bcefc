"""Ring algorithms: every core talks only to its two ring neighbours (i-1 -> i -> i+1).

- all-reduce = reduce-scatter then all-gather, 2(p-1) steps. Chunk c (of `bounds(n, p)`)
  is reduced as it travels round the ring from core c: core c+k holds
  x[c+k] + (x[c+k-1] + (... + x[c])), and core c-1 ends with the full sum, which the
  all-gather then copies unchanged to every core (so all cores hold identical bits).
- reduce-scatter: the same first phase, shifted so core i ends with chunk i.
- all-gather: core i starts with chunk i; p-1 steps pass chunks along.
- broadcast (pipelined): the vector is cut into slices that flow root -> root+1 -> ...;
  each core forwards a slice as soon as it has it.
Time on a ring fabric, with c the largest chunk in bytes and m the alpha-beta-gamma model:
  all-reduce      2(p-1)(alpha + c beta) + (p-1) c max(0, gamma - beta)
  reduce-scatter  (p-1)(alpha + c beta) + (p-1) c max(0, gamma - beta)
  all-gather      (p-1)(alpha + c beta)
  broadcast       (p-1) alpha + (S + p - 2) s beta   (S slices of at most s bytes)
"""

from __future__ import annotations

import math

from tilesim.collectives.cost import AlphaBeta
from tilesim.collectives.schedule import Local, Recv, Schedule, Send, bounds, empty_schedule, start_from_input

OPS = ("allreduce", "reducescatter", "allgather", "broadcast")
SLICE_BYTES = 256 * 1024  # pipelined broadcast: bytes per slice
MAX_SLICES = 64


def broadcast_slices(nbytes: int) -> int:
    return max(1, min(MAX_SLICES, math.ceil(nbytes / SLICE_BYTES)))


def build(op: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    if op == "broadcast":
        return _broadcast(p, n, root, itemsize)
    if op == "allgather":
        b = bounds(n, p)
        sched = empty_schedule(op, "ring", p, n, [b[i + 1] - b[i] for i in range(p)], [n] * p)
        for i in range(p):
            sched.steps[i].append(Local("copy", "out", b[i], "in", 0, b[i + 1] - b[i]))
        _pass_chunks(sched, b, first_chunk=lambda i: i, reduce=False, step0=0)
        sched.order = "no reduction: chunk i is copied from core i"
        return sched
    b = bounds(n, p)
    sched = empty_schedule(op, "ring", p, n, [n] * p, [n] * p)
    start_from_input(sched)
    if op == "reducescatter":
        _pass_chunks(sched, b, first_chunk=lambda i: i - 1, reduce=True, step0=0)
        sched.result = [(b[i], b[i + 1]) for i in range(p)]
        sched.out_len = [n] * p
        sched.order = "chunk c is summed round the ring from core c+1: x[c] + (... + (x[c+2] + x[c+1]))"
        return sched
    _pass_chunks(sched, b, first_chunk=lambda i: i, reduce=True, step0=0)
    _pass_chunks(sched, b, first_chunk=lambda i: i + 1, reduce=False, step0=p - 1)
    sched.order = "chunk c is summed round the ring from core c: x[c-1] + (... + (x[c+1] + x[c]))"
    return sched


def _pass_chunks(sched: Schedule, b: list[int], first_chunk, reduce: bool, step0: int) -> None:
    ring_steps(sched, list(range(sched.p)), b, first_chunk, reduce, step0)


def ring_steps(sched: Schedule, group: list[int], b: list[int], first_chunk, reduce: bool, step0: int) -> None:
    """len(group)-1 ring steps among `group` (in ring order) over chunks `b` (absolute bounds).

    At step s the member at position j sends chunk first_chunk(j) - s to the next member
    and receives chunk first_chunk(j) - s - 1 from the previous one (reducing it or not).
    """
    g = len(group)
    for j, core in enumerate(group):
        right, left = group[(j + 1) % g], group[(j - 1) % g]
        for s in range(g - 1):
            send_c = (first_chunk(j) - s) % g
            recv_c = (first_chunk(j) - s - 1) % g
            sched.steps[core].append(Send(right, "out", b[send_c], b[send_c + 1], (step0 + s, send_c)))
            sched.steps[core].append(Recv(left, "out", b[recv_c], b[recv_c + 1], (step0 + s, recv_c), reduce))


def _broadcast(p: int, n: int, root: int, itemsize: int) -> Schedule:
    sched = empty_schedule("broadcast", "ring", p, n, [n] * p, [n] * p, root=root)
    slices = bounds(n, broadcast_slices(n * itemsize))
    sched.steps[root].append(Local("copy", "out", 0, "in", 0, n))
    for hop in range(p):
        core = (root + hop) % p
        nxt = (core + 1) % p
        for k in range(len(slices) - 1):
            lo, hi = slices[k], slices[k + 1]
            if hop > 0:
                sched.steps[core].append(Recv((core - 1) % p, "out", lo, hi, (hop - 1, k), False))
            if hop < p - 1:
                sched.steps[core].append(Send(nxt, "out", lo, hi, (hop, k)))
    sched.order = "no reduction: the root's vector is forwarded slice by slice"
    return sched


def predict(op: str, p: int, n: int, itemsize: int, m: AlphaBeta, root: int = 0) -> float:
    if p <= 1 or n == 0:
        return 0.0
    c = math.ceil(n / p) * itemsize
    if op == "allreduce":
        t = 2 * (p - 1) * (m.alpha + c * m.beta) + (p - 1) * c * m.streamed_gamma
    elif op == "reducescatter":
        t = (p - 1) * (m.alpha + c * m.beta) + (p - 1) * c * m.streamed_gamma
    elif op == "allgather":
        t = (p - 1) * (m.alpha + c * m.beta)
    else:
        slices = broadcast_slices(n * itemsize)
        s = math.ceil(n / slices) * itemsize
        t = (p - 1) * m.alpha + (slices + p - 2) * s * m.beta
    return m.overhead + t
