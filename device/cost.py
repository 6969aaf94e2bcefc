"""How long a kernel takes on a core: the roofline, in one place.

    time = overhead + max(FLOPs / (peak[dtype] * eff.compute),
                          sum over memories of bytes / (bandwidth * eff.memory))

- FLOPs count a multiply-add as 2; `dtype` is the compute dtype whose peak applies.
- Bytes are read plus written, split by the kind of tensor they belong to (weights,
  kv_cache, activations); the device's placement says which memory each kind lives in
  (tile SRAM or off-chip), and so which bandwidth applies.
- `overhead` is the core's fixed per-kernel cost (launch, synchronisation).
- `eff` is the achieved fraction of peak for the kernel's class (matmul, attention,
  elementwise), 1.0 unless a preset was calibrated (see docs/timing-model.md).
A kernel is compute-bound when its compute term is the larger one, memory-bound otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tilesim.device.spec import CoreSpec


@dataclass(frozen=True)
class KernelCost:
    """What a kernel does, independent of the device: FLOPs and bytes by tensor kind."""

    name: str
    op_class: str  # matmul | attention | elementwise
    flops: float
    dtype: str  # compute dtype: fp32 | fp16 | bf16 | fp8 | int8
    bytes: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def total_bytes(self) -> float:
        return float(sum(self.bytes.values()))


@dataclass(frozen=True)
class KernelTime:
    """A kernel's modelled time on one core, and its parts (seconds)."""

    total: float
    compute: float
    memory: float
    overhead: float

    @property
    def bound(self) -> str:
        return "compute" if self.compute >= self.memory else "memory"


def kernel_time(core: CoreSpec, placement: Mapping[str, str], cost: KernelCost) -> KernelTime:
    """The roofline time of `cost` on `core`, with tensors placed as `placement` says."""
    eff = core.efficiency[cost.op_class]
    compute = cost.flops / (core.peak_flops[cost.dtype] * eff.compute) if cost.flops else 0.0
    memory = 0.0
    for kind, nbytes in cost.bytes.items():
        if nbytes:
            memory += nbytes / (core.bandwidth(placement.get(kind, "tiles")) * eff.memory)
    overhead = core.kernel_overhead_s
    return KernelTime(overhead + max(compute, memory), compute, memory, overhead)
