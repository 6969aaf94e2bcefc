"""A device built from a preset: its spec, its cores (each with memory), and its fabric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import simpy

from tilesim.device.cost import KernelCost, KernelTime, kernel_time
from tilesim.device.fabric import Fabric, TransferRecord
from tilesim.device.faults import FaultSpec
from tilesim.device.memory import Arena
from tilesim.device.spec import DeviceSpec, load_preset
from tilesim.device.topology import Topology
from tilesim.errors import ConfigError


@dataclass
class Core:
    """One core: its index and its memory arena (tile SRAM and optional off-chip memory)."""

    index: int
    memory: Arena


class Device:
    """`cores` cores of a preset, e.g. `Device("trn1", cores=8, link_bandwidth="200 GB/s")`.

    `preset` is a preset name, a YAML path or a DeviceSpec; keyword overrides change single
    figures (see `DeviceSpec.with_overrides`). With `backed=False` the cores' memory keeps
    accounts but holds no bytes (timing-only runs).
    """

    def __init__(
        self, preset: str | DeviceSpec = "trn1", cores: int | None = None, *, backed: bool = True, **overrides: Any
    ):
        if not isinstance(backed, bool):
            raise ConfigError(f"backed={backed!r} must be True or False")
        spec = preset if isinstance(preset, DeviceSpec) else load_preset(preset)
        if cores is not None:
            overrides["cores"] = cores
        self.spec: DeviceSpec = spec.with_overrides(**overrides) if overrides else spec
        self.backed = backed
        core = self.spec.core
        self.cores = [
            Core(
                i,
                Arena(
                    i,
                    core.tiles,
                    core.tile_bytes,
                    core.offchip_bytes,
                    dict(self.spec.placement),
                    backed,
                    core.tile_grain,
                ),
            )
            for i in range(self.spec.cores)
        ]
        self.topology = Topology(self.spec.fabric, self.spec.cores)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_cores(self) -> int:
        return self.spec.cores

    def fabric(
        self,
        faults: FaultSpec | None = None,
        on_transfer: Callable[[TransferRecord], None] | None = None,
        env: simpy.Environment | None = None,
        message_bytes: int = 0,
    ) -> Fabric:
        """A fresh discrete-event fabric joining this device's cores, with the protocol of a
        collective of `message_bytes` (`FabricSpec.for_message`)."""
        spec = self.spec.fabric.for_message(message_bytes)
        return Fabric(spec, self.spec.cores, env=env, faults=faults, on_transfer=on_transfer)

    def kernel_time(self, cost: KernelCost) -> KernelTime:
        """The roofline time of a kernel on one of this device's cores."""
        return kernel_time(self.spec.core, self.spec.placement, cost)

    def __repr__(self) -> str:
        return f"Device({self.spec.name!r}, cores={self.spec.cores})"


def describe(spec: DeviceSpec) -> dict[str, Any]:
    """The key figures of a spec as plain JSON-able values (what `tilesim devices` prints)."""
    core, fabric = spec.core, spec.fabric
    weights_region = spec.placement["weights"]
    return {
        "name": spec.name,
        "description": spec.description,
        "cores": spec.cores,
        "max_cores": spec.max_cores,
        "tiles_per_core": core.tiles,
        "tile_bytes": core.tile_bytes,
        "tile_memory_bytes": core.tile_memory_bytes,
        "offchip_memory_bytes": core.offchip_bytes,
        "peak_flops": dict(core.peak_flops),
        "memory_bandwidth": core.bandwidth(weights_region),
        "tile_bandwidth": core.tile_bandwidth,
        "offchip_bandwidth": core.offchip_bandwidth,
        "weights_in": weights_region,
        "link_bandwidth": fabric.link_bandwidth,
        "link_latency": fabric.link_latency,
        "links_per_core": fabric.links_per_core,
        "topology": fabric.topology,
        "large_messages": asdict(fabric.large_messages) if fabric.large_messages else None,
        "kernel_overhead_s": core.kernel_overhead_s,
        "clock_hz": core.clock_hz,
        "bulk_synchronous": bool(core.exchange_bandwidth),
        "sync_s": core.sync_s,
        "exchange_bandwidth": core.exchange_bandwidth,
    }
