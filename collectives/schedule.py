"""A collective as data: for every core, the list of sends, receives and local steps it runs.

Algorithms build a `Schedule`; executors run it (`execute.py`: analytic or discrete-event,
with real data, with no data for timing, or with symbolic contributions for proofs).

Buffers: each core has `in` (its input, never written), `out` (its result, also the working
buffer) and `tmp` (scratch, `tmp_len` elements). Ranges are in elements along axis 0.
Semantics, which every executor shares:
- `Send(peer, buf, lo, hi, tag)`: post a copy of `buf[lo:hi]` to `peer`; the core goes on.
- `Recv(peer, buf, lo, hi, tag, reduce)`: wait for `peer`'s message `tag`; then
  `buf[lo:hi] = combine(buf[lo:hi], message)` if `reduce`, else `buf[lo:hi] = message`.
- `Local(kind, dst, dst_lo, src, src_lo, count)`: `copy` or `reduce` within the core.
A core runs its steps in order, one channel (`ch`) at a time: steps on different channels
of a core are independent streams, as NCCL runs the two trees of a double binary tree on
separate channels. A core is done when every channel has run its last step and every
message it sent has arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Send:
    peer: int
    buf: str
    lo: int
    hi: int
    tag: tuple
    ch: int = 0


@dataclass(frozen=True)
class Recv:
    peer: int
    buf: str
    lo: int
    hi: int
    tag: tuple
    reduce: bool
    ch: int = 0


@dataclass(frozen=True)
class Local:
    kind: str  # "copy" | "reduce"
    dst: str
    dst_lo: int
    src: str
    src_lo: int
    count: int
    ch: int = 0


Step = Send | Recv | Local


@dataclass
class Schedule:
    """The steps of one collective on `p` cores over vectors of `n` elements.

    `in_len[i]` and `out_len[i]` are the lengths of core i's input and result; the result
    is `out[result[i][0]:result[i][1]]`. `order` says, in words, the order of reductions.
    """

    op: str
    algo: str
    p: int
    n: int
    steps: list[list[Step]]
    in_len: list[int]
    out_len: list[int]
    result: list[tuple[int, int]]
    tmp_len: int = 0
    root: int = 0
    order: str = ""
    notes: list[str] = field(default_factory=list)

    def messages(self) -> int:
        return sum(isinstance(s, Send) for steps in self.steps for s in steps)


def bounds(n: int, parts: int) -> list[int]:
    """Chunk boundaries splitting n elements into `parts` chunks, the first n % parts one longer.

    `bounds(10, 4) == [0, 3, 6, 8, 10]`; chunk j is `[b[j], b[j + 1])`.
    """
    base, extra = divmod(n, parts)
    out = [0]
    for j in range(parts):
        out.append(out[-1] + base + (1 if j < extra else 0))
    return out


def empty_schedule(
    op: str, algo: str, p: int, n: int, in_len: list[int], out_len: list[int], root: int = 0
) -> Schedule:
    """A schedule with no steps yet: one empty list per core, results covering `out`."""
    return Schedule(
        op=op,
        algo=algo,
        p=p,
        n=n,
        steps=[[] for _ in range(p)],
        in_len=in_len,
        out_len=out_len,
        result=[(0, out_len[i]) for i in range(p)],
        root=root,
    )


def start_from_input(schedule: Schedule) -> None:
    """Every core begins with its whole input copied into `out` (free: fused with the first step)."""
    for i in range(schedule.p):
        if schedule.in_len[i]:
            schedule.steps[i].append(Local("copy", "out", 0, "in", 0, schedule.in_len[i]))
