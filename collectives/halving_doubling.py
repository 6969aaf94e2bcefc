"""Recursive halving-doubling all-reduce (Rabenseifner): reduce-scatter by recursive halving,
then all-gather by recursive doubling.

With p' the largest power of two <= p and r = p - p', the first 2r cores pair up first:
each even one sends its whole vector to the odd one above it, which adds it
(x[2i+1] + x[2i]) and stands for both; the p' remaining cores halve and double; at the end
each odd core sends the result back to its even partner (Rabenseifner's fix for p not a
power of two, as in MPICH).
Halving: at distance d = p'/2, p'/4, ..., 1 a core keeps the lower half of its current
range if its bit d is clear (else the upper), sends the other half to the partner at
distance d and adds the partner's half into its own: local + incoming. Each element's sum
is finished on exactly one core, and doubling copies it unchanged to all.
Time on a switch, K = log2 p', N bytes (each step moves at most the rounded-up half):
  2K alpha + 2 (p'-1)/p' N beta + (p'-1)/p' N max(0, gamma - beta)
  + (r > 0) (2 alpha + 2 N beta + N max(0, gamma - beta))
"""

from __future__ import annotations

import math

from tilesim.collectives.cost import AlphaBeta
from tilesim.collectives.schedule import Recv, Schedule, Send, empty_schedule, start_from_input

OPS = ("allreduce",)


def _shape(p: int) -> tuple[int, int]:
    pp = 1 << (p.bit_length() - 1)
    return pp, p - pp


def build(op: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    sched = empty_schedule(op, "halving_doubling", p, n, [n] * p, [n] * p)
    start_from_input(sched)
    pp, r = _shape(p)
    real = [2 * i + 1 for i in range(r)] + list(range(2 * r, p))  # virtual rank -> core
    for i in range(r):  # fold the first 2r cores into r
        even, odd = 2 * i, 2 * i + 1
        sched.steps[even].append(Send(odd, "out", 0, n, (0, "fold", even)))
        sched.steps[odd].append(Recv(even, "out", 0, n, (0, "fold", even), True))
    ranges = {v: (0, n) for v in range(pp)}
    history: list[dict[int, tuple[int, int, int, int]]] = []
    d, step = pp // 2, 1
    while d:
        moves = {}
        for v in range(pp):
            lo, hi = ranges[v]
            mid = lo + (hi - lo) // 2
            keep, give = ((lo, mid), (mid, hi)) if not v & d else ((mid, hi), (lo, mid))
            moves[v] = (*keep, *give)
            partner = v ^ d
            sched.steps[real[v]].append(Send(real[partner], "out", give[0], give[1], (step, "halve", v)))
            sched.steps[real[v]].append(Recv(real[partner], "out", keep[0], keep[1], (step, "halve", partner), True))
        for v in range(pp):
            ranges[v] = moves[v][:2]
        history.append(moves)
        d //= 2
        step += 1
    d = 1
    for moves in reversed(history):
        for v in range(pp):
            keep_lo, keep_hi, give_lo, give_hi = moves[v]
            partner = v ^ d
            sched.steps[real[v]].append(Send(real[partner], "out", keep_lo, keep_hi, (step, "double", v)))
            sched.steps[real[v]].append(Recv(real[partner], "out", give_lo, give_hi, (step, "double", partner), False))
        d *= 2
        step += 1
    for i in range(r):  # unfold
        even, odd = 2 * i, 2 * i + 1
        sched.steps[odd].append(Send(even, "out", 0, n, (step, "unfold", odd)))
        sched.steps[even].append(Recv(odd, "out", 0, n, (step, "unfold", odd), False))
    sched.order = (
        "first x[2i+1] + x[2i] for the 2(p-p') folded cores; then halving adds partners' partial "
        "sums, local + incoming, at distances p'/2, ..., 1"
    )
    return sched


def predict(op: str, p: int, n: int, itemsize: int, m: AlphaBeta, root: int = 0) -> float:
    if p <= 1 or n == 0:
        return 0.0
    pp, r = _shape(p)
    t = 0.0
    length = n
    for _ in range(pp.bit_length() - 1):
        half = math.ceil(length / 2)  # the larger half moves on the critical path
        t += 2 * m.alpha + 2 * half * itemsize * m.beta + half * itemsize * m.streamed_gamma
        length = half
    if r:
        t += 2 * m.alpha + 2 * n * itemsize * m.beta + n * itemsize * m.streamed_gamma
    return m.overhead + t
