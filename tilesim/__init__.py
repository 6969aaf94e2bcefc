"""tilesim: an emulator of AI inference accelerators for transformer decoders.

    import tilesim
    dev = tilesim.Device("trn1", cores=8)
    model = tilesim.load("path/or/name", device=dev, tp=8, dtype="fp32")
    out = model.generate(input_ids, max_new_tokens=32, top_k=5, seed=0)
    out.tokens, out.report, out.trace

Heavy parts (numba kernels, checkpoint loaders) are imported on first use, so
`import tilesim` stays quick.
"""

from tilesim.errors import (
    CheckpointError,
    CollectiveTimeout,
    ConfigError,
    FabricFault,
    GenerationError,
    HostLost,
    NumericalError,
    OutOfHostMemory,
    OutOfMemory,
    OutOfOffchipMemory,
    OutOfTileMemory,
    ShardingError,
    TilesimError,
    TilesimWarning,
    UnknownPreset,
    WorkloadError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CollectiveTimeout",
    "ConfigError",
    "Device",
    "FabricFault",
    "GenerationError",
    "HostLost",
    "NumericalError",
    "OutOfHostMemory",
    "OutOfMemory",
    "OutOfOffchipMemory",
    "OutOfTileMemory",
    "ShardingError",
    "TilesimError",
    "TilesimWarning",
    "UnknownPreset",
    "WorkloadError",
    "__version__",
    "load",
]


def __getattr__(name: str):
    if name == "Device":
        from tilesim.device import Device

        return Device
    if name == "load":
        from tilesim.api import load

        return load
    raise AttributeError(f"module 'tilesim' has no attribute {name!r}")
