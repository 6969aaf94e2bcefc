"""Core memory: tile SRAM and off-chip memory as arenas of aligned blocks.

Each core owns a `Region` per kind of memory. A region is one linear address space; in tile
memory, tile `i` owns addresses `[i * tile_bytes, (i + 1) * tile_bytes)`, so a tensor placed
at a contiguous range fills consecutive tiles. A tensor may instead be pinned to one tile.

A tile region with a `grain` maps tensors as Poplar's `mapTensorLinearly` does: the tensor
is cut into grains, and the grains are dealt out evenly over the tiles (at most
ceil(grains / tiles) per tile), starting where the previous tensor ended, so per-tile use
stays balanced as on the hardware. Such a region keeps per-tile accounting by category
instead of addresses; each tensor's bytes are its own array.

Capacity is enforced by accounting. The bytes behind a region are an anonymous memory
mapping of the region's full size made with MAP_NORESERVE, so the host only commits the
pages a tensor really touches: a 16 GiB core does not take 16 GiB of host memory, and
tensors that the planner puts at the same offset really share bytes. Freed pages stay
committed for the next tenant (the host holds the region's high-water mark, not more). Where such a mapping
cannot be made, each block gets its own array instead (same accounting, no aliasing).
"""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilesim.errors import OutOfOffchipMemory, OutOfTileMemory
from tilesim.units import fmt_bytes

ALIGNMENT = 64  # bytes: a cache line, and a multiple of every dtype's size
HOST_SHARE = 0.8  # of this machine's memory, the most a run plans to commit: the rest is the OS's and the interpreter's
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux value; Python < 3.13 lacks the name


# a container's memory limit (cgroup v2, then v1): past it the kernel kills the process, whatever the machine has
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory_bytes() -> int:
    """The memory this process may use, in bytes (what the backed regions' pages come from):
    the machine's physical memory, or its container's limit where that is less."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) or a number past the memory (v1) when there is no limit
            limit = min(limit, int(text))
    return limit


@dataclass(frozen=True)
class Block:
    """One placed tensor: `nbytes` asked, `size` reserved (aligned) at `offset` in `region`."""

    name: str
    kind: str
    region: str
    core: int
    offset: int
    nbytes: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


class Region:
    """A linear address space of `capacity` bytes with a first-fit allocator.

    `tile_bytes` is set for tile memory (addresses map onto tiles) and None for off-chip
    memory. `backed=False` keeps accounting only (timing-only runs place nothing real).
    """

    def __init__(
        self,
        core: int,
        name: str,
        capacity: int,
        tile_bytes: int | None = None,
        backed: bool = True,
        alignment: int = ALIGNMENT,
        grain: int = 0,
    ):
        self.core = core
        self.grain = int(grain) if tile_bytes else 0
        self._spread: dict[int, tuple[int, int, int, int]] = {}  # key -> first tile, tiles, share, last share
        self._kind_use: dict[str, np.ndarray] = {}  # spread regions: category -> bytes on each tile
        self._next_tile = 0
        self._next_key = 0
        self.name = name
        self.capacity = int(capacity)
        self.tile_bytes = tile_bytes
        self.backed = backed
        self.alignment = alignment
        self._free_offsets: list[int] = [0] if capacity > 0 else []
        self._free_sizes: list[int] = [self.capacity] if capacity > 0 else []
        self.blocks: dict[int, Block] = {}  # offset -> block
        self.used = 0
        self.peak = 0
        self._backing: mmap.mmap | None = None
        self._mapping_failed = False
        self._own_arrays: dict[int, np.ndarray] = {}

    # -- allocation -------------------------------------------------------------------

    @property
    def tiles(self) -> int:
        return self.capacity // self.tile_bytes if self.tile_bytes else 1

    @property
    def free_bytes(self) -> int:
        return self.capacity - self.used

    @property
    def largest_free(self) -> int:
        return max(self._free_sizes, default=0)

    @property
    def fragmentation(self) -> float:
        """1 - largest free run / free bytes: 0 when all free space is one run."""
        free = sum(self._free_sizes)
        return 0.0 if free == 0 else 1.0 - self.largest_free / free

    def _aligned(self, nbytes: int) -> int:
        a = self.alignment
        return max(a, (int(nbytes) + a - 1) // a * a)

    def allocate(self, nbytes: int, name: str, kind: str, tile: int | None = None) -> Block:
        """Place `nbytes` for tensor `name`; `tile` pins it inside one tile.

        Raises OutOfTileMemory (OutOfOffchipMemory for off-chip memory) naming the core, the
        region or tile, the bytes asked and free, and the largest tenants. Nothing is placed
        when it raises.
        """
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        if self.grain:
            if tile is not None and not 0 <= tile < self.tiles:
                raise OutOfTileMemory(f"core {self.core}: there is no tile {tile} in {self.name} memory")
            return self._allocate_spread(int(nbytes), name, kind, tile)
        size = self._aligned(nbytes)
        lo, hi = 0, self.capacity
        if tile is not None:
            if self.tile_bytes is None or not 0 <= tile < self.tiles:
                raise OutOfTileMemory(f"core {self.core}: there is no tile {tile} in {self.name} memory")
            lo, hi = tile * self.tile_bytes, (tile + 1) * self.tile_bytes
        offset = self._find(size, lo, hi)
        if offset is None:
            error = OutOfTileMemory if self.name == "tiles" else OutOfOffchipMemory
            raise error(self._oom_message(nbytes, name, kind, tile))
        self._take(offset, size)
        block = Block(name, kind, self.name, self.core, offset, int(nbytes), size)
        self.blocks[offset] = block
        self.used += size
        self.peak = max(self.peak, self.used)
        return block

    def _spread_of(self, nbytes: int) -> tuple[int, int, int, int]:
        grains = max(1, -(-nbytes // self.grain))
        per = -(-grains // self.tiles)  # grains on each tile but the last
        tiles = -(-grains // per)
        return self._next_tile, tiles, per * self.grain, (grains - (tiles - 1) * per) * self.grain

    def _shares(self, first: int, tiles: int, share: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """The tiles a spread tensor is on, and its bytes on each."""
        add = np.full(tiles, share, dtype=np.int64)
        add[-1] = last
        return (first + np.arange(tiles)) % self.tiles, add

    def _allocate_spread(self, nbytes: int, name: str, kind: str, pinned: int | None = None) -> Block:
        if pinned is None:
            first, tiles, share, last = self._spread_of(nbytes)
        else:  # the whole tensor on one tile
            first, tiles, share = pinned, 1, max(1, -(-nbytes // self.grain)) * self.grain
            last = share
        where, add = self._shares(first, tiles, share, last)
        use = self.tile_usage()
        over = np.flatnonzero(use[where] + add > self.tile_bytes)
        if over.size:
            tile = int(where[over[0]])
            raise OutOfTileMemory(self._spread_message(nbytes, name, kind, tile, int(add[over[0]])))
        key = self._next_key
        self._next_key += max(self.alignment, nbytes)
        if pinned is None:
            self._next_tile = (first + tiles) % self.tiles
        self._spread[key] = (first, tiles, share, last)
        self._kind_use.setdefault(kind, np.zeros(self.tiles, dtype=np.int64))[where] += add
        size = int(add.sum())
        block = Block(name, kind, self.name, self.core, key, nbytes, size)
        self.blocks[key] = block
        self.used += size
        self.peak = max(self.peak, self.used)
        return block

    def _spread_message(self, nbytes: int, name: str, kind: str, tile: int, share: int) -> str:
        on_tile = {k: int(v[tile]) for k, v in sorted(self._kind_use.items()) if v[tile]}
        totals = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in on_tile.items()) or "nothing"
        top = ", ".join(f"{b.name} ({fmt_bytes(self.bytes_on(b, tile))})" for b in self.tenants(tile)[:3]) or "none"
        return (
            f"core {self.core}, tile {tile} of {self.tiles} ({fmt_bytes(self.tile_bytes)}): cannot place {name!r} "
            f"({kind}, {fmt_bytes(nbytes)} spread over the tiles, {fmt_bytes(share)} on this tile); the tile holds "
            f"{totals}; largest tenants there: {top}"
        )

    def bytes_on(self, block: Block, tile: int) -> int:
        """Bytes of `block` on `tile` (its whole size in memory without tiles)."""
        if not self.tile_bytes:
            return block.size
        if block.offset not in self._spread:
            lo, hi = tile * self.tile_bytes, (tile + 1) * self.tile_bytes
            return max(0, min(block.end, hi) - max(block.offset, lo))
        first, tiles, share, last = self._spread[block.offset]
        index = (tile - first) % self.tiles
        return 0 if index >= tiles else last if index == tiles - 1 else share

    def _find(self, size: int, lo: int, hi: int) -> int | None:
        for start, length in zip(self._free_offsets, self._free_sizes, strict=True):
            begin = max(start, lo)
            begin = (begin + self.alignment - 1) // self.alignment * self.alignment
            if begin + size <= min(start + length, hi):
                return begin
            if start >= hi:
                return None
        return None

    def _take(self, offset: int, size: int) -> None:
        i = bisect.bisect_right(self._free_offsets, offset) - 1
        start, length = self._free_offsets[i], self._free_sizes[i]
        del self._free_offsets[i], self._free_sizes[i]
        if offset + size < start + length:
            self._free_offsets.insert(i, offset + size)
            self._free_sizes.insert(i, start + length - offset - size)
        if start < offset:
            self._free_offsets.insert(i, start)
            self._free_sizes.insert(i, offset - start)

    def free(self, block: Block) -> None:
        """Return `block`'s bytes; neighbouring free runs merge so they can be reused whole."""
        if self.blocks.get(block.offset) != block:
            raise ValueError(f"block {block.name!r} is not placed in core {self.core} {self.name}")
        del self.blocks[block.offset]
        self.used -= block.size
        self._own_arrays.pop(block.offset, None)
        if block.offset in self._spread:
            where, add = self._shares(*self._spread.pop(block.offset))
            self._kind_use[block.kind][where] -= add
            return
        offset, size = block.offset, block.size
        i = bisect.bisect_left(self._free_offsets, offset)
        if i < len(self._free_offsets) and self._free_offsets[i] == offset + size:
            size += self._free_sizes[i]
            del self._free_offsets[i], self._free_sizes[i]
        if i > 0 and self._free_offsets[i - 1] + self._free_sizes[i - 1] == offset:
            offset = self._free_offsets[i - 1]
            size += self._free_sizes[i - 1]
            del self._free_offsets[i - 1], self._free_sizes[i - 1]
            i -= 1
        self._free_offsets.insert(i, offset)
        self._free_sizes.insert(i, size)

    # -- bytes ------------------------------------------------------------------------

    def view(self, block: Block, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
        """The array of `dtype` and `shape` that lives in `block`'s bytes."""
        if not self.backed:
            raise RuntimeError(f"core {self.core} {self.name} memory holds no data (timing-only)")
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > block.nbytes:
            raise ValueError(f"{block.name!r}: {shape} {dtype} does not fit in {block.nbytes} bytes")
        backing = None if self.grain else self._mapping()
        if backing is None:
            own = self._own_arrays.get(block.offset)
            if own is None:
                own = self._own_arrays[block.offset] = np.zeros(block.size, dtype=np.uint8)
            return own[: count * dtype.itemsize].view(dtype).reshape(shape)
        return np.frombuffer(backing, dtype=dtype, count=count, offset=block.offset).reshape(shape)

    def _mapping(self) -> mmap.mmap | None:
        if self._backing is None and not self._mapping_failed:
            try:
                flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
                self._backing = mmap.mmap(-1, max(self.capacity, 1), flags=flags)
            except (OSError, AttributeError, ValueError):
                self._mapping_failed = True

        return self._backing

    # -- reports ----------------------------------------------------------------------

    def tenants(self, tile: int | None = None) -> list[Block]:
        """Blocks by size, largest first; with `tile`, only those with bytes on that tile."""
        blocks = list(self.blocks.values())
        if tile is not None and self.grain:
            blocks = [b for b in blocks if self.bytes_on(b, tile)]
            return sorted(blocks, key=lambda b: (-self.bytes_on(b, tile), b.offset))
        if tile is not None and self.tile_bytes:
            lo, hi = tile * self.tile_bytes, (tile + 1) * self.tile_bytes
            blocks = [b for b in blocks if b.offset < hi and b.end > lo]
        return sorted(blocks, key=lambda b: (-b.size, b.offset))

    def tile_usage(self) -> np.ndarray:
        """Bytes in use on each tile, shape (tiles,); one entry for off-chip memory."""
        if not self.tile_bytes:
            return np.array([self.used], dtype=np.int64)
        if self.grain:
            return sum(self._kind_use.values(), np.zeros(self.tiles, dtype=np.int64))
        return self._address_usage(list(self.blocks.values()))

    def _address_usage(self, blocks: list[Block]) -> np.ndarray:
        tb = self.tile_bytes
        usage = np.zeros(self.tiles + 1, dtype=np.int64)
        if not blocks:
            return usage[:-1]
        starts = np.fromiter((b.offset for b in blocks), np.int64)
        ends = np.fromiter((b.end for b in blocks), np.int64)
        first, last = starts // tb, (ends - 1) // tb
        # Whole tiles strictly between the first and the last tile of each block.
        full = np.zeros(self.tiles + 1, dtype=np.int64)
        np.add.at(full, first + 1, 1)
        np.add.at(full, np.maximum(last, first + 1), -1)
        usage += np.cumsum(full) * tb
        same = first == last
        np.add.at(usage, first[same], ends[same] - starts[same])
        split = ~same
        np.add.at(usage, first[split], (first[split] + 1) * tb - starts[split])
        np.add.at(usage, last[split], ends[split] - last[split] * tb)
        return usage[:-1]

    def tile_usage_by_kind(self) -> dict[str, np.ndarray]:
        """Bytes on each tile per category (weights, kv_cache, activations, the runtime's own)."""
        if self.grain:
            return {k: v.copy() for k, v in self._kind_use.items() if v.any()}
        if not self.tile_bytes:
            return {}
        kinds = sorted({b.kind for b in self.blocks.values()})
        return {k: self._address_usage([b for b in self.blocks.values() if b.kind == k]) for k in kinds}

    def _oom_message(self, nbytes: int, name: str, kind: str, tile: int | None) -> str:
        if tile is not None:
            where = f"tile {tile}"
            free = int(self.tile_bytes - self.tile_usage()[tile])
            tenants = self.tenants(tile)
        elif self.tile_bytes:
            where = f"tile memory ({self.tiles} tiles x {fmt_bytes(self.tile_bytes)})"
            free, tenants = self.free_bytes, self.tenants()
            if self._free_sizes:
                run = int(np.argmax(self._free_sizes))
                first_tile = self._free_offsets[run] // self.tile_bytes
                where += f", largest free run {fmt_bytes(self.largest_free)} from tile {first_tile}"
        else:
            where = f"off-chip memory ({fmt_bytes(self.capacity)})"
            free, tenants = self.free_bytes, self.tenants()
        top = ", ".join(f"{b.name} ({fmt_bytes(b.size)})" for b in tenants[:3]) or "none"
        return (
            f"core {self.core}, {where}: cannot place {name!r} ({kind}, {fmt_bytes(nbytes)} asked, "
            f"{fmt_bytes(free)} free); largest tenants: {top}"
        )


class Arena:
    """A core's memory: a `tiles` region and, if the core has one, an `offchip` region."""

    def __init__(
        self,
        core: int,
        tiles: int,
        tile_bytes: int,
        offchip_bytes: int,
        placement: dict[str, str],
        backed: bool = True,
        tile_grain: int = 0,
    ):
        self.core = core
        self.placement = dict(placement)
        self.regions: dict[str, Region] = {
            "tiles": Region(core, "tiles", tiles * tile_bytes, tile_bytes, backed, grain=tile_grain)
        }
        if offchip_bytes > 0:
            self.regions["offchip"] = Region(core, "offchip", offchip_bytes, None, backed)

    def region_for(self, kind: str) -> str:
        """The region where tensors of `kind` (weights, kv_cache, activations) live."""
        return self.placement.get(kind, "tiles")

    def allocate(self, nbytes: int, name: str, kind: str, region: str | None = None, tile: int | None = None) -> Block:
        """Place a tensor in `region` (default: where the preset puts `kind`)."""
        return self.regions[region or self.region_for(kind)].allocate(nbytes, name, kind, tile)

    def free(self, block: Block) -> None:
        self.regions[block.region].free(block)

    def view(self, block: Block, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
        return self.regions[block.region].view(block, dtype, shape)

    def used_by_kind(self) -> dict[str, int]:
        """Reserved bytes per tensor kind over all regions."""
        out: dict[str, int] = {}
        for region in self.regions.values():
            for block in region.blocks.values():
                out[block.kind] = out.get(block.kind, 0) + block.size
        return out

    @property
    def used(self) -> int:
        return sum(r.used for r in self.regions.values())

    @property
    def peak(self) -> int:
        return sum(r.peak for r in self.regions.values())
