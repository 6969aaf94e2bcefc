"""How long a kernel takes on a core: the roofline, in one place.

    time = overhead + max(FLOPs / (peak[dtype] * eff.compute) + rows * softmax_row_s,
                          sum over memories of bytes / (bandwidth * eff.memory)
                          + pieces * dma_piece_s)

- FLOPs count a multiply-add as 2; `dtype` is the compute dtype whose peak applies.
- Bytes are read plus written, split by the kind of tensor they belong to (weights,
  kv_cache, activations); the device's placement says which memory each kind lives in
  (tile SRAM or off-chip), and so which bandwidth applies.
- `overhead` is the core's fixed per-kernel cost (launch, synchronisation).
- `eff` is the achieved fraction of peak for the kernel's class (matmul, attention,
  elementwise), 1.0 unless a preset was calibrated (see docs/timing-model.md); a preset may
  give a product of one weight format its own (`matmul:int4`: unpacking costs bandwidth).
- `pieces` is the number of contiguous pieces the kernel's off-chip traffic is cut into
  (a DMA descriptor each, `dma_piece_s` apiece): decode attention reads the KV cache one
  position at a time, a piece of batch x heads x head_dim elements.
- `rows` is the number of softmax rows of an attention kernel (query positions x heads),
  each a fixed cost `softmax_row_s` on the engines beside the products (vector, scalar).
- On a core with a systolic array (`array`), a product's N and K are padded to multiples of
  the array's side (a 432-wide shard runs as 512); `shape` = (M, N, K) says which.
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
    pieces: float = 0.0  # contiguous pieces of off-chip traffic (one DMA descriptor each)
    rows: float = 0.0  # softmax rows (query position x head), `softmax_row_s` apiece
    shape: tuple[int, int, int] | None = None  # (M, N, K) of a product, for the array's padding
    variant: str = ""  # a product's weight format: `efficiency["matmul:<variant>"]` applies if given

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
    sync: float = 0.0  # bulk-synchronous cores (IPUs): the sync after the compute phase
    exchange: float = 0.0  # and the exchange phase that moves the activations between tiles

    @property
    def bound(self) -> str:
        return "compute" if self.compute >= self.memory else "memory"


def kernel_time(core: CoreSpec, placement: Mapping[str, str], cost: KernelCost) -> KernelTime:
    """The roofline time of `cost` on `core`, with tensors placed as `placement` says."""
    eff = core.efficiency.get(f"{cost.op_class}:{cost.variant}") or core.efficiency[cost.op_class]
    flops = cost.flops
    if core.array and cost.shape:
        m, n, k = cost.shape
        flops = 2.0 * m * _padded(n, core.array) * _padded(k, core.array)
    compute = flops / (core.peak_flops[cost.dtype] * eff.compute) if flops else 0.0
    compute += cost.rows * core.softmax_row_s
    memory = cost.pieces * core.dma_piece_s
    for kind, nbytes in cost.bytes.items():
        if nbytes:
            memory += nbytes / (core.bandwidth(placement.get(kind, "tiles")) * eff.memory)
    overhead = core.kernel_overhead_s
    if not core.exchange_bandwidth:
        return KernelTime(overhead + max(compute, memory), compute, memory, overhead)
    # A superstep: every tile computes on what it holds (tensors spread evenly, so the busiest
    # tile's share is the mean), all tiles sync, then the activations move to the tiles that
    # read them next over the exchange
    exchange = cost.bytes.get("activations", 0) / core.exchange_bandwidth
    total = overhead + max(compute, memory) + core.sync_s + exchange
    return KernelTime(total, compute, memory, overhead, core.sync_s, exchange)


def _padded(n: int, side: int) -> int:
    return -(-n // side) * side
