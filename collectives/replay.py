"""A recorded collective's data moves (`execute.Recording`) as one compiled call.

Replaying a recording move by move costs one numpy call per move, and a direct all-reduce
on 32 cores has about two thousand of them per step. When every array the moves touch is
float32 and contiguous and the combine is addition, the moves are lowered once, like a
compiler would: they are run on names instead of numbers (`_values`), so that what each
buffer element ends up holding is known as an expression of the elements the collective
started from. The copies vanish (a name is passed on, nothing is computed), an addition of
the same two operands is computed once however many cores repeat it (a direct all-reduce
has every core add x[0] + x[1] + ... in the same order: the sum is formed once, not p
times), and additions no result depends on are dropped. What remains is one call: gather
the elements read into a scratch array, run the additions there, write each changed
element to its buffer. A buffer named private (the schedule's `tmp`) is not written back
unless the collective reads it before writing it. The same additions of the same operands
in the same order (IEEE float32, no fast-math), so the same bits as the numpy replay
(tests/collectives/test_replay.py). Lowering works element by element (0.3 s for a
1000-token prefill's all-reduce at TP 9), so it is done once per shape of the moves and
shared by every recording of that shape (a model has one per layer and value), each with
its own buffers' addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from tilesim.device.kernels import addresses, jit_cache
from tilesim.device.kernels.addresses import at

jit_cache.depends_on(__file__, addresses)


@dataclass
class Compiled:
    gather: np.ndarray  # int64 (runs, 3): source address, elements, destination address
    adds: np.ndarray  # int64 (runs, 4): destination, left, right addresses, elements
    writes: np.ndarray  # int64 (runs, 3): destination address, elements, source address
    buffers: list[np.ndarray]  # the flat buffers the addresses point into (kept alive)
    scratch: np.ndarray  # float32; kept: a fresh one each replay costs its page faults


def compile_moves(
    moves: list[tuple[str, np.ndarray, np.ndarray]], buffers: list[np.ndarray], private: list[np.ndarray] = ()
) -> Compiled | None:
    """The moves over the flat float32 `buffers` they work on as one call (every other array
    a move names is a message's staging array, written before it is read; a `private`
    buffer's contents afterwards do not matter). None when some array is not contiguous
    float32, ranges overlap, or an addition reads an element nothing wrote: the caller
    replays with numpy then."""
    flat: list[np.ndarray] = []
    seen: set[int] = set()
    for b in buffers:
        if b.dtype != np.float32 or not b.flags.c_contiguous:
            return None
        if b.ctypes.data not in seen:
            seen.add(b.ctypes.data)
            flat.append(b.reshape(-1))
    spans = sorted((b.ctypes.data, b.ctypes.data + b.nbytes, i) for i, b in enumerate(flat))
    if any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1)):
        return None  # buffers that share bytes: the write-back order would matter
    offsets, size = [], 0
    for b in flat:
        offsets.append(size)
        size += b.size
    staging: dict[int, int] = {}

    def locate(a: np.ndarray) -> int | None:
        nonlocal size
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            return None
        address = a.ctypes.data
        for start, end, i in spans:
            if start <= address and address + a.nbytes <= end:
                return offsets[i] + (address - start) // 4
        if a.base is not None:
            return None  # a view of something that is neither a buffer nor a staging array
        if address not in staging:
            staging[address] = size
            size += a.size
        return staging[address]

    table = []
    for kind, dst, src in moves:
        d, s = locate(dst), locate(src)
        if d is None or s is None or dst.size != src.size:
            return None
        if d != s and d < s + src.size and s < d + dst.size:
            return None  # numpy copies overlapping ranges through a temporary; names would not
        table.append((kind == "copy", d, s, dst.size))
    private_ids = {a.ctypes.data for a in private}
    mine = tuple(b.ctypes.data in private_ids for b in flat)
    key = (np.array(table, np.int64).tobytes(), tuple(b.size for b in flat), mine)
    if key not in _PLANS:
        while len(_PLANS) >= _PLANS_KEPT:
            del _PLANS[next(iter(_PLANS))]
        _PLANS[key] = _plan(table, size, offsets, [b.size for b in flat], mine)
    plan = _PLANS[key]
    if plan is None:
        return None
    gather, adds, writes, scratch_size = plan
    scratch = np.empty(max(scratch_size, 1), np.float32)
    address = _Addresses(flat, offsets, scratch)
    return Compiled(address(gather, (0, 2)), address(adds, (0, 1, 2)), address(writes, (0, 2)), flat, scratch)


# Lowered programs by the moves' shape: every all-reduce of one size in a model (one per
# layer and value) records the same moves over other buffers, so one lowering serves them all.
_PLANS: dict[tuple, tuple | None] = {}
_PLANS_KEPT = 64


def _plan(table, size, offsets, sizes, private):
    """(gather, additions, writes, scratch size) with buffers named by their index, or None."""
    leaves = offsets[-1] + sizes[-1] if sizes else 0  # a buffer element's name is its offset in scratch
    flow = _values(table, size, leaves)
    if flow is None:
        return None
    kept = [i for i, p in enumerate(private) if not p]
    lowered = _lower(offsets, sizes, kept, leaves, *flow)
    if lowered is not None and not lowered[-1] <= set(kept):  # a private buffer read before it is written
        lowered = _lower(offsets, sizes, list(range(len(sizes))), leaves, *flow)
    return None if lowered is None else lowered[:4]


class _Addresses:
    """A plan's locations as one recording's addresses. A location below `leaves` is a
    buffer element (its name: the buffers' offsets end to end), one above is scratch."""

    def __init__(self, flat: list[np.ndarray], offsets: list[int], scratch: np.ndarray):
        self.bases = np.array([b.ctypes.data for b in flat], np.int64)
        self.offsets = np.array(offsets, np.int64)
        self.leaves = offsets[-1] + flat[-1].size if flat else 0
        self.scratch = scratch.ctypes.data

    def __call__(self, rows: np.ndarray, columns: tuple[int, ...]) -> np.ndarray:
        out = rows.copy()
        for c in columns:
            loc = rows[:, c]
            buffer = np.maximum(np.searchsorted(self.offsets, loc, side="right") - 1, 0)
            in_buffer = self.bases[buffer] + 4 * (loc - self.offsets[buffer])
            out[:, c] = np.where(loc < self.leaves, in_buffer, self.scratch + 4 * (loc - self.leaves))
        return out


def _values(table: list[tuple[bool, int, int, int]], size: int, leaves: int):
    """Run the moves on names: an element of a buffer starts as its own name, one of a
    staging array as -1 (unwritten); an addition gives its results new names, or the names
    an earlier addition of the same operand ranges got. Returns (names, blocks, count):
    every element's final name, (first name, left names, right names) per addition of new
    names, in order; None if an addition reads an unwritten element."""
    names = np.full(size, -1, np.int64)
    names[:leaves] = np.arange(leaves)
    blocks: list[tuple[int, np.ndarray, np.ndarray]] = []
    made: dict[tuple[int, int, int], int] = {}
    count = leaves
    for copy, d, s, n in table:
        right = names[s : s + n].copy()
        if copy:
            names[d : d + n] = right
            continue
        left = names[d : d + n].copy()
        if n and min(left.min(), right.min()) < 0:
            return None
        key = (int(left[0]), int(right[0]), n) if n and _run(left) and _run(right) else None
        first = made.get(key) if key else None
        if first is None:
            first, count = count, count + n
            blocks.append((first, left, right))
            if key:
                made[key] = first
        names[d : d + n] = np.arange(first, first + n)
    return names, blocks, count


def _run(a: np.ndarray) -> bool:
    return bool(a[-1] - a[0] == a.size - 1 and (a.size < 2 or (np.diff(a) == 1).all()))


def _lower(offsets, sizes, kept, leaves, names, blocks, count):
    """(gather, additions, writes, scratch size, the buffers read) that leave the buffers
    `kept` as the moves do, or None if one of them would get an unwritten element. Rows hold
    locations (`_Addresses`): gather (source, elements, destination), additions
    (destination, left, right, elements), writes (destination, elements, source).

    An addition reads a buffer element where it is: nothing is written back before the
    last addition. A buffer element that a write copies elsewhere is gathered first (a
    write could overwrite it before it is copied). A sum takes scratch only while it is
    needed: a block of sums whose last reader has run gives its place to a later block, so
    a decode step's all-reduce works in a few KB that stay in cache."""
    need = np.zeros(count, bool)
    finals = []
    for i in kept:
        lo, n = offsets[i], sizes[i]
        final = names[lo : lo + n]
        changed = np.flatnonzero(final != np.arange(lo, lo + n))
        if changed.size and final[changed].min() < 0:
            return None
        need[final[changed]] = True
        finals.append((i, lo + changed, final[changed]))
    for first, left, right in reversed(blocks):
        used = need[first : first + left.size]
        if used.any():
            need[left[used]] = True
            need[right[used]] = True
    owner = np.repeat(np.arange(len(sizes)), sizes)  # each leaf's buffer
    written = np.concatenate([f for _, _, f in finals]) if finals else np.zeros(0, np.int64)
    where = np.full(count, -1, np.int64)  # scratch offset of a gathered leaf or a sum
    copied = np.unique(written[written < leaves])
    where[copied] = np.arange(copied.size)
    top = copied.size
    block_of = np.full(count, -1, np.int64)
    for j, (first, left, _) in enumerate(blocks):
        block_of[first : first + left.size] = j
    last = np.full(len(blocks), -1)
    for j, (first, left, right) in enumerate(blocks):
        used = need[first : first + left.size]
        read = np.concatenate((left[used], right[used]))
        last[np.unique(block_of[read[read >= leaves]])] = j
    last[np.unique(block_of[written[written >= leaves]])] = len(blocks)  # results live to the end
    free: list[tuple[int, int]] = []  # (start, size) of scratch no live sum holds
    live: list[tuple[int, int, int]] = []  # (last reader, start, size)
    adds = []
    loc = np.arange(count)  # where an addition reads: a leaf in its buffer, a sum in scratch
    for j, (first, left, right) in enumerate(blocks):
        made = np.flatnonzero(need[first : first + left.size])
        if not made.size:
            continue
        for entry in [e for e in live if e[0] < j]:
            live.remove(entry)
            free.append(entry[1:])
        size = left.size
        fits = [f for f in free if f[1] >= size]
        if fits:
            start, room = min(fits, key=lambda f: f[1])
            free.remove((start, room))
            if room > size:
                free.append((start + size, room - size))
        else:
            start, top = top, top + size
        live.append((last[j], start, size))
        where[first : first + size] = start + np.arange(size)
        loc[first : first + size] = leaves + where[first : first + size]
        lo, ro = loc[left[made]], loc[right[made]]
        groups = (np.where(left[made] < leaves, owner[np.minimum(left[made], leaves - 1)], -1),
                  np.where(right[made] < leaves, owner[np.minimum(right[made], leaves - 1)], -1))  # fmt: skip
        adds += [(d, a, b, n) for d, a, b, n in _runs(leaves + where[first + made], lo, ro, same=groups)]
    writes = [(d, n, s) for _, changed, final in finals for d, s, n in _runs(changed, leaves + where[final])]
    gather = [(leaf, n, leaves + slot) for leaf, slot, n in _runs(copied, where[copied], same=(owner[copied],))]
    read = {int(b) for b in np.unique(owner[np.flatnonzero(need[:leaves])])}
    rows = [np.array(r, np.int64).reshape(-1, w) for r, w in ((gather, 3), (adds, 4), (writes, 3))]
    return (*rows, top, read)


def _runs(first: np.ndarray, *others: np.ndarray, same: tuple[np.ndarray, ...] = ()) -> list[tuple[int, ...]]:
    """Maximal runs where `first` and every array of `others` go up by one together and
    every array of `same` stays constant: (first's start, each other's start, length) per run."""
    if first.size == 0:
        return []
    steps = np.diff(first) != 1
    for o in others:
        steps |= np.diff(o) != 1
    for g in same:
        steps |= np.diff(g) != 0
    starts = np.concatenate(([0], np.flatnonzero(steps) + 1))
    lengths = np.diff(np.concatenate((starts, [first.size])))
    return [(int(first[s]), *(int(o[s]) for o in others), int(n)) for s, n in zip(starts, lengths, strict=True)]


def replay(c: Compiled) -> None:
    """Gather what is copied, form the sums, write what changed: one call."""
    _replay(c.gather, c.adds, c.writes)


_F32 = np.zeros(0, np.float32)


@njit(cache=True)
def _replay(gather, adds, writes):  # pragma: no cover - compiled
    for i in range(gather.shape[0]):
        _copy(gather[i, 2], gather[i, 0], gather[i, 1])
    for i in range(adds.shape[0]):
        n = adds[i, 3]
        out, left, right = at(adds[i, 0], _F32, (n,)), at(adds[i, 1], _F32, (n,)), at(adds[i, 2], _F32, (n,))
        for j in range(n):
            out[j] = left[j] + right[j]
    for i in range(writes.shape[0]):
        _copy(writes[i, 0], writes[i, 2], writes[i, 1])


@njit(cache=True)
def _copy(dst, src, n):  # pragma: no cover - compiled
    out, values = at(dst, _F32, (n,)), at(src, _F32, (n,))
    for j in range(n):
        out[j] = values[j]
