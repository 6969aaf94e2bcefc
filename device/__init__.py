"""The hardware model: device specs and presets, cores with tile memory, the fabric, kernels.

Nothing here imports from the rest of tilesim but its errors and units: collectives,
runtime and models build on this package, never the other way round.
"""

from tilesim.device.cost import KernelCost, KernelTime, kernel_time
from tilesim.device.device import Core, Device, describe
from tilesim.device.fabric import Fabric, TransferRecord, Transport
from tilesim.device.faults import FaultSpec
from tilesim.device.memory import Arena, Block, Region
from tilesim.device.spec import CoreSpec, DeviceSpec, FabricSpec, load_preset, preset_names
from tilesim.device.topology import Link, Topology

__all__ = [
    "Arena",
    "Block",
    "Core",
    "CoreSpec",
    "Device",
    "DeviceSpec",
    "Fabric",
    "FabricSpec",
    "FaultSpec",
    "KernelCost",
    "KernelTime",
    "Link",
    "Region",
    "Topology",
    "TransferRecord",
    "Transport",
    "describe",
    "kernel_time",
    "load_preset",
    "preset_names",
]
