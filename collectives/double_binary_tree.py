"""Double binary tree all-reduce (as NCCL): two binary trees, each reducing then broadcasting
half of the vector, on two channels of every core.

Tree A is `trees.binary(p)`; tree B plays position i with rank p-1-i when p is even and
(i+1) mod p when p is odd, so most inner ranks of one tree are leaves of the other and
the two trees share little. Reduction order in each tree: a node adds its children's
partial sums in order, x[v] + s[left] + s[right]; the tree's root broadcasts the sum.
Time on a switch: the slower tree's reduce then broadcast of N/2 bytes, each following
its shape (`trees.reduce_time`, `trees.broadcast_time`), taking the two trees as
independent; where they use one link at the same moment the simulation queues and is slower.
"""

from __future__ import annotations

from tilesim.collectives import trees
from tilesim.collectives.binomial_tree import add_broadcast, add_reduce
from tilesim.collectives.cost import AlphaBeta
from tilesim.collectives.schedule import Local, Schedule, bounds, empty_schedule

OPS = ("allreduce",)


def tree_pair(p: int):
    shape = trees.binary(p)
    other = [p - 1 - i for i in range(p)] if p % 2 == 0 else [(i + 1) % p for i in range(p)]
    return shape, trees.relabel(shape, other)


def build(op: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    sched = empty_schedule(op, "double_binary_tree", p, n, [n] * p, [n] * p)
    half = bounds(n, 2)
    for ch, (parent, children) in enumerate(tree_pair(p)):
        lo, hi = half[ch], half[ch + 1]
        for core in range(p):  # each channel starts from its own half of the input
            sched.steps[core].append(Local("copy", "out", lo, "in", lo, hi - lo, ch))
        add_reduce(sched, parent, children, lo, hi, step=0, ch=ch)
        add_broadcast(sched, parent, children, lo, hi, step=1, ch=ch)
    sched.order = "each half: node v adds x[v] + s[left] + s[right] up its tree; the tree root broadcasts"
    return sched


def predict(op: str, p: int, n: int, itemsize: int, m: AlphaBeta, root: int = 0) -> float:
    if p <= 1 or n == 0:
        return 0.0
    worst = 0.0
    half = bounds(n, 2)
    for ch, (parent, children) in enumerate(tree_pair(p)):
        nbytes = (half[ch + 1] - half[ch]) * itemsize
        tree_root = parent.index(-1)
        up = trees.reduce_time(children, tree_root, nbytes, m)
        down = [list(reversed(c)) for c in children]
        worst = max(worst, trees.broadcast_time(down, tree_root, nbytes, m, start=up))
    return m.overhead + worst
