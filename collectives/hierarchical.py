"""Hierarchical all-reduce for a 2D torus (rows x cols, `topology.torus_shape`): one dimension,
then the other.

1. reduce-scatter along each row (a ring over the row's cols cores): core (r, c) ends with
   chunk c of its row's sum;
2. all-reduce of that chunk along each column (a ring over rows cores);
3. all-gather along each row.
Every step is between torus neighbours. Reduction order: within a row, ring order (see
ring.py); then the row sums of a chunk are added in ring order down the column.
Time, with C cols, R rows, c1 = N/C and c2 = c1/R bytes (rounded up):
  2 (C-1)(alpha + c1 beta) + (C-1) c1 max(0, gamma - beta)
  + 2 (R-1)(alpha + c2 beta) + (R-1) c2 max(0, gamma - beta)
"""

from __future__ import annotations

import math

from tilesim.collectives.cost import AlphaBeta
from tilesim.collectives.ring import ring_steps
from tilesim.collectives.schedule import Schedule, bounds, empty_schedule, start_from_input
from tilesim.device.topology import torus_shape

OPS = ("allreduce",)


def build(op: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    rows, cols = torus_shape(p)
    sched = empty_schedule(op, "hierarchical", p, n, [n] * p, [n] * p)
    start_from_input(sched)
    row_chunks = bounds(n, cols)
    row_groups = [[r * cols + c for c in range(cols)] for r in range(rows)]
    col_groups = [[r * cols + c for r in range(rows)] for c in range(cols)]
    for group in row_groups:  # 1: reduce-scatter in rows, member c ends with chunk c
        ring_steps(sched, group, row_chunks, lambda j: j - 1, True, step0=0)
    for c, group in enumerate(col_groups):  # 2: all-reduce chunk c down its column
        lo, hi = row_chunks[c], row_chunks[c + 1]
        sub = [lo + x for x in bounds(hi - lo, rows)]
        ring_steps(sched, group, sub, lambda j: j, True, step0=cols)
        ring_steps(sched, group, sub, lambda j: j + 1, False, step0=cols + rows)
    for group in row_groups:  # 3: all-gather in rows
        ring_steps(sched, group, row_chunks, lambda j: j, False, step0=cols + 2 * rows)
    sched.order = "ring order along each row, then the row partial sums in ring order down each column"
    return sched


def predict(op: str, p: int, n: int, itemsize: int, m: AlphaBeta, root: int = 0) -> float:
    if p <= 1 or n == 0:
        return 0.0
    rows, cols = torus_shape(p)
    c1 = math.ceil(n / cols)
    c2 = math.ceil(c1 / rows) * itemsize
    c1 *= itemsize
    t = 2 * (cols - 1) * (m.alpha + c1 * m.beta) + (cols - 1) * c1 * m.streamed_gamma
    t += 2 * (rows - 1) * (m.alpha + c2 * m.beta) + (rows - 1) * c2 * m.streamed_gamma
    return m.overhead + t
