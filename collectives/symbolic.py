"""Run a schedule on contributions instead of numbers, to prove what each output holds.

Element e of core i's input is the row vector "one contribution from core i" (a one-hot
row of length p); sending copies rows and reducing adds them. At the end, row e of a
core's output counts how many times each core's input reached that element, whatever
the values would have been (as MSCCLang checks its programs). `expected_counts` says what
a correct collective must give.
"""

from __future__ import annotations

import numpy as np

from tilesim.collectives.execute import run_analytic
from tilesim.collectives.schedule import Schedule, bounds
from tilesim.device.analytic import AnalyticFabric
from tilesim.device.spec import FabricSpec

_ANY_FABRIC = FabricSpec(topology="switch", link_bandwidth=1.0, link_latency=0.0, links_per_core=1)


def contributions(schedule: Schedule) -> list[np.ndarray]:
    """For every core, an (elements, p) array: result element e holds core j's input count times."""
    p = schedule.p
    buffers = []
    for core in range(p):
        own = np.zeros((schedule.in_len[core], p), dtype=np.int64)
        own[:, core] = 1
        buffers.append(
            {
                "in": own,
                "out": np.zeros((schedule.out_len[core], p), dtype=np.int64),
                "tmp": np.zeros((schedule.tmp_len, p), dtype=np.int64),
            }
        )
    run_analytic(schedule, AnalyticFabric(_ANY_FABRIC, p), buffers, np.add, itemsize=1, gamma=0.0)
    return [buffers[c]["out"][lo:hi] for c, (lo, hi) in enumerate(schedule.result)]


def expected_counts(op: str, p: int, n: int, root: int = 0) -> list[np.ndarray]:
    """What `contributions` must return for a correct `op`."""
    b = bounds(n, p)
    owner = np.repeat(np.arange(p), np.diff(b))  # which core's chunk each element is in
    if op == "allreduce":
        return [np.ones((n, p), dtype=np.int64) for _ in range(p)]
    if op == "reducescatter":
        return [np.ones((b[i + 1] - b[i], p), dtype=np.int64) for i in range(p)]
    if op == "allgather":
        return [np.eye(p, dtype=np.int64)[owner] for _ in range(p)]
    if op == "broadcast":
        one = np.zeros((n, p), dtype=np.int64)
        one[:, root] = 1
        return [one.copy() for _ in range(p)]
    # alltoall: core i gets block i of every core j, in core order
    return [np.repeat(np.eye(p, dtype=np.int64), b[i + 1] - b[i], axis=0) for i in range(p)]
