"""A recorded collective's data moves (`execute.Recording`) as one compiled loop.

Replaying a recording move by move costs one numpy call per move, and a direct all-reduce
on 32 cores has about two thousand of them per step. When every array the moves touch is
float32 and contiguous and the combine is addition, the moves are lowered once into a
table over one scratch array: the buffers the schedule works on are gathered into it, the
messages' staging arrays get room in it, one numba loop runs the moves (kind, destination
offset, source offset, count), and the buffers are written back. The gathering and the write-back
run inside the loop's call too (the buffers' addresses in a table, device/kernels/addresses.py),
so an all-reduce is one call whatever the number of cores. The same element
operations in the same order (IEEE float32 addition, no fast-math), so the same bits as the
numpy replay (tests/collectives/test_replay.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from tilesim.device.kernels.addresses import Table, at


@dataclass
class Compiled:
    table: np.ndarray  # int64 (moves, 4): kind (0 copy, 1 add), destination, source, count
    buffers: list[np.ndarray]  # flat buffers gathered in and written back, in scratch order (kept alive)
    places: np.ndarray  # int64 (buffers, 3): each buffer's address, elements, offset in scratch
    scratch: np.ndarray  # float32: the buffers, then staging; kept: a fresh one each replay costs its page faults


def compile_moves(moves: list[tuple[str, np.ndarray, np.ndarray]], buffers: list[np.ndarray]) -> Compiled | None:
    """The table of `moves` over the flat float32 `buffers` they work on (every other array a
    move names is a message's staging array, written before it is read). None when some
    array is not contiguous float32, or ranges overlap: the caller replays with numpy then."""
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

    table = np.zeros((len(moves), 4), dtype=np.int64)
    for i, (kind, dst, src) in enumerate(moves):
        d, s = locate(dst), locate(src)
        if d is None or s is None or dst.size != src.size:
            return None
        if d != s and d < s + src.size and s < d + dst.size:
            return None  # numpy copies overlapping ranges through a temporary; the loop would not
        table[i] = (0 if kind == "copy" else 1, d, s, dst.size)
    places = Table()
    for b, offset in zip(flat, offsets, strict=True):
        places.add(b, b.size, offset)
    return Compiled(table, flat, places.array(), np.empty(size, np.float32))


def replay(c: Compiled) -> None:
    """Gather the buffers into scratch, run the moves, write the buffers back: one call."""
    _replay(c.table, c.places, c.scratch)


_F32 = np.zeros(0, np.float32)


@njit(cache=True)
def _replay(table, places, x):  # pragma: no cover - compiled
    for i in range(places.shape[0]):
        x[places[i, 2] : places[i, 2] + places[i, 1]] = at(places[i, 0], _F32, (places[i, 1],))
    for i in range(table.shape[0]):
        kind, d, s, n = table[i, 0], table[i, 1], table[i, 2], table[i, 3]
        dst, src = x[d : d + n], x[s : s + n]  # views: no wraparound test per element, so LLVM vectorizes
        if kind == 0:
            for j in range(n):
                dst[j] = src[j]
        else:
            for j in range(n):
                dst[j] = dst[j] + src[j]
    for i in range(places.shape[0]):
        at(places[i, 0], _F32, (places[i, 1],))[:] = x[places[i, 2] : places[i, 2] + places[i, 1]]
