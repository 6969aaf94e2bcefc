"""Core memory: placement, reuse, per-tile accounting, and running out of memory."""

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilesim.device import Device
from tilesim.device.memory import ALIGNMENT, Arena, Region
from tilesim.errors import OutOfOffchipMemory, OutOfTileMemory


def test_blocks_are_aligned_views_into_the_regions_bytes():
    region = Region(core=0, name="tiles", capacity=64 * 1024, tile_bytes=1024)
    a = region.allocate(10, "a", "weights")
    b = region.allocate(100, "b", "weights")
    assert a.offset % ALIGNMENT == 0 and b.offset % ALIGNMENT == 0
    assert b.offset >= a.offset + 10
    va = region.view(a, np.uint8, (10,))
    vb = region.view(b, np.float32, (25,))
    va[:] = 7
    vb[:] = 1.5
    assert va.tolist() == [7] * 10 and vb.sum() == 37.5


def test_freed_bytes_are_reused_and_neighbouring_runs_merge():
    region = Region(core=0, name="tiles", capacity=4096, tile_bytes=1024)
    blocks = [region.allocate(1024, f"t{i}", "activations") for i in range(4)]
    assert region.free_bytes == 0
    region.free(blocks[1])
    region.free(blocks[2])
    assert region.largest_free == 2048  # the two runs merged
    again = region.allocate(2048, "big", "activations")
    assert again.offset == 1024
    assert region.peak == 4096


def test_blocks_placed_at_the_same_offset_share_bytes():
    """The planner's reuse is real: a tensor placed where a freed one was sees its bytes."""
    region = Region(core=0, name="tiles", capacity=8192, tile_bytes=1024)
    first = region.allocate(256, "first", "activations")
    region.view(first, np.float32, (64,))[:] = 42.0
    region.free(first)
    second = region.allocate(256, "second", "activations")
    assert second.offset == first.offset
    second_view = region.view(second, np.float32, (64,))
    second_view[0] = 1.0
    assert second_view[0] == 1.0


def test_pinned_tensors_stay_inside_their_tile():
    region = Region(core=3, name="tiles", capacity=8 * 1024, tile_bytes=1024)
    block = region.allocate(500, "pinned", "activations", tile=5)
    assert block.offset >= 5 * 1024 and block.end <= 6 * 1024
    usage = region.tile_usage()
    assert usage[5] == block.size and usage.sum() == block.size


def brute_force_tile_usage(region: Region) -> np.ndarray:
    owner = np.zeros(region.capacity, dtype=bool)
    for block in region.blocks.values():
        owner[block.offset : block.end] = True
    return owner.reshape(region.tiles, region.tile_bytes).sum(axis=1)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=40))
def test_per_tile_usage_matches_a_byte_by_byte_count(ops):
    region = Region(core=0, name="tiles", capacity=16 * 1024, tile_bytes=1024, backed=False)
    live = []
    for is_free, size in ops:
        if is_free and live:
            region.free(live.pop(size % len(live)))
        else:
            with contextlib.suppress(OutOfTileMemory):
                live.append(region.allocate(size, f"t{len(live)}", "activations"))
    assert region.tile_usage().tolist() == brute_force_tile_usage(region).tolist()
    assert region.used == sum(b.size for b in live)
    assert region.used + region.free_bytes == region.capacity
    assert 0.0 <= region.fragmentation <= 1.0


def test_out_of_memory_names_core_tile_bytes_and_tenants():
    dev = Device("tiny")
    memory = dev.cores[2].memory
    memory.allocate(600 * 1024, "layers.0.mlp.up", "activations")
    memory.allocate(300 * 1024, "layers.0.mlp.down", "activations")
    used = memory.regions["tiles"].used
    with pytest.raises(OutOfTileMemory) as err:
        memory.allocate(200 * 1024, "layers.1.attn.q", "activations")
    message = str(err.value)
    assert "core 2" in message and "tile memory (64 tiles x 16 KiB)" in message
    assert "'layers.1.attn.q'" in message and "200 KiB asked" in message and "124 KiB free" in message
    assert "largest tenants: layers.0.mlp.up (600 KiB), layers.0.mlp.down (300 KiB)" in message
    assert memory.regions["tiles"].used == used  # nothing half-placed


def test_out_of_memory_on_a_pinned_tile_names_that_tile():
    memory = Device("tiny").cores[0].memory
    memory.allocate(10 * 1024, "resident", "activations", tile=7)
    with pytest.raises(OutOfTileMemory, match=r"core 0, tile 7: cannot place 'x' .*6 KiB free.*resident"):
        memory.allocate(8 * 1024, "x", "activations", tile=7)


def test_out_of_offchip_memory_names_the_offchip_memory():
    memory = Device("trn1").cores[1].memory
    memory.allocate(15 * 2**30, "weights.all", "weights")
    with pytest.raises(
        OutOfOffchipMemory, match=r"core 1, off-chip memory \(16 GiB\): cannot place 'kv' .*2 GiB asked, 1 GiB free"
    ):
        memory.allocate(2 * 2**30, "kv", "kv_cache")


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_a_16_gib_core_only_takes_the_host_memory_it_touches():
    dev = Device("trn1", cores=4)
    before = rss_bytes()
    for core in dev.cores:
        block = core.memory.allocate(12 * 2**30, "huge", "weights")
        view = core.memory.view(block, np.uint8, (12 * 2**30,))
        view[: 1 << 20] = 1  # touch one MiB
    assert dev.cores[0].memory.used == 12 * 2**30
    assert rss_bytes() - before < 256 * 2**20


def test_arena_places_each_kind_where_the_preset_says():
    arena = Arena(
        0, tiles=4, tile_bytes=1024, offchip_bytes=1 << 20, placement={"weights": "offchip", "activations": "tiles"}
    )
    w = arena.allocate(100, "w", "weights")
    a = arena.allocate(100, "a", "activations")
    assert (w.region, a.region) == ("offchip", "tiles")
    assert arena.used_by_kind() == {"weights": 128, "activations": 128}


def test_the_memory_that_is_full_names_its_error_class():
    from tilesim.errors import OutOfMemory

    tiles = Region(core=0, name="tiles", capacity=4096, tile_bytes=1024, backed=False)
    offchip = Region(core=0, name="offchip", capacity=4096, tile_bytes=None, backed=False)
    with pytest.raises(OutOfTileMemory):
        tiles.allocate(8192, "w", "weights")
    with pytest.raises(OutOfOffchipMemory) as raised:
        offchip.allocate(8192, "w", "weights")
    assert isinstance(raised.value, OutOfMemory) and not isinstance(raised.value, OutOfTileMemory)


def _dealt(nbytes: int, tiles: int, grain: int) -> list[int]:
    """Poplar's linear mapping, independently: grains dealt ceil(grains / tiles) to a tile, in order."""
    grains = -(-nbytes // grain)
    per = -(-grains // tiles)
    out = []
    while grains > 0:
        out.append(min(per, grains) * grain)
        grains -= per
    return out + [0] * (tiles - len(out))


def test_a_linear_mapping_deals_each_tensor_over_all_tiles():
    tiles, tile_bytes, grain = 10, 4096, 64
    region = Region(0, "tiles", tiles * tile_bytes, tile_bytes, backed=False, grain=grain)
    region.allocate(6400, "w", "weights")  # 100 grains: 10 on every tile
    assert region.tile_usage().tolist() == _dealt(6400, tiles, grain)
    region.allocate(130, "b", "weights")  # 3 grains: the first tensor ended on the last tile, so from tile 0
    both = np.add(_dealt(6400, tiles, grain), _dealt(130, tiles, grain))
    assert region.tile_usage().tolist() == both.tolist()
    kv = region.allocate(6000, "kv", "kv_cache")  # 94 grains: 10 on each of 9 tiles, 4 on the 10th
    usage = region.tile_usage()
    assert usage.sum() == region.used == 6400 + 192 + 94 * 64
    assert usage.max() - usage.min() <= 2 * 10 * grain  # balanced within a share of each tensor
    assert region.tile_usage_by_kind()["kv_cache"].sum() == 94 * 64
    region.free(kv)
    assert "kv_cache" not in region.tile_usage_by_kind() and region.used == 6400 + 192


def test_a_tile_that_overflows_is_named_with_its_categories_and_tenants():
    region = Region(3, "tiles", 4 * 1024, 1024, backed=False, grain=64)
    region.allocate(3072, "layers.0.q.weight", "weights")
    region.allocate(512, "kv", "kv_cache")
    with pytest.raises(OutOfTileMemory) as err:
        region.allocate(2048, "layers.1.q.weight", "weights")
    message = str(err.value)
    assert "core 3, tile" in message and "of 4 (1 KiB)" in message
    assert "weights 768 B" in message and "largest tenants there: layers.0.q.weight (768 B)" in message
    assert region.used == 3584  # nothing placed


def test_a_linearly_mapped_tensor_holds_its_own_bytes():
    region = Region(0, "tiles", 8 * 1024, 1024, grain=64)
    a, b = region.allocate(400, "a", "weights"), region.allocate(400, "b", "weights")
    region.view(a, "float32", (100,))[:] = 1.0
    region.view(b, "float32", (100,))[:] = 2.0
    assert region.view(a, "float32", (100,)).sum() == 100.0


def test_a_tensor_pinned_to_one_tile_of_a_linearly_mapped_region_stays_there():
    region = Region(0, "tiles", 4 * 1024, 1024, backed=False, grain=64)
    region.allocate(1024, "spread", "weights")  # 256 bytes on every tile
    region.allocate(100, "pinned", "activations", tile=2)
    assert region.tile_usage().tolist() == [256, 256, 256 + 128, 256]
    with pytest.raises(OutOfTileMemory, match="tile 2 of 4"):
        region.allocate(700, "too big", "activations", tile=2)
    with pytest.raises(OutOfTileMemory, match="no tile 9"):
        region.allocate(64, "nowhere", "activations", tile=9)


def test_the_host_memory_is_the_containers_limit_where_that_is_less(tmp_path, monkeypatch):
    """In a container the kernel kills a process at its cgroup's limit, not at the machine's
    memory: the host checks (runtime/session.py, collectives) must count with the smaller."""
    import os

    from tilesim.device import memory

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    monkeypatch.setattr(memory, "CGROUP_LIMITS", (str(v2), str(v1)))
    assert memory.host_memory_bytes() == physical  # neither file
    v2.write_text("max\n")
    v1.write_text(f"{2**63 - 4096}\n")  # v1's "no limit"
    assert memory.host_memory_bytes() == physical
    v1.write_text(f"{1 << 30}\n")
    assert memory.host_memory_bytes() == min(physical, 1 << 30)
    v2.write_text(f"{512 << 20}\n")
    assert memory.host_memory_bytes() == min(physical, 512 << 20)
