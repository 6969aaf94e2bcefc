"""The alpha-beta-gamma model of a collective on a fabric (Thakur, Rabenseifner, Gropp 2005).

- alpha: seconds per message between neighbours (one hop of latency; a switch's one-way
  latency), paid by every step on the critical path;
- beta: seconds per byte on the link between neighbours;
- gamma: seconds per byte to reduce a received message into the working buffer, which
  reads two operands and writes one (3 bytes of memory traffic per byte) at the bandwidth of
  the memory the buffer lives in. A received message is reduced as it streams in, so a
  reduction only adds `max(0, gamma - beta)` per byte to the critical path; a reduction of
  data already received (the direct algorithm) costs the full gamma.
- overhead: a fixed cost per collective (launch and synchronisation).
Each algorithm module has `predict(op, p, nbytes, model, root)` in these terms.
"""

from __future__ import annotations

from dataclasses import dataclass

from tilesim.device.spec import DeviceSpec
from tilesim.device.topology import Topology


@dataclass(frozen=True)
class AlphaBeta:
    alpha: float  # s per message between neighbours
    beta: float  # s per byte between neighbours
    gamma: float  # s per byte reduced
    overhead: float  # s per collective
    egress: float  # bytes/s one core can send on all its links together

    @property
    def streamed_gamma(self) -> float:
        """What reducing a byte adds when it is reduced as it arrives."""
        return max(0.0, self.gamma - self.beta)


def model_for(spec: DeviceSpec, p: int, region: str, nbytes: int = 0) -> AlphaBeta:
    """The alpha-beta-gamma figures of `spec`'s fabric for `p` cores, buffers in `region`, for
    a collective of `nbytes` (the fabric's protocol for that size: `FabricSpec.for_message`)."""
    topology = Topology(spec.fabric.for_message(nbytes), p)
    reduce_bw = spec.core.bandwidth(region)
    gamma = 3.0 / reduce_bw
    if p <= 1 or not topology.links:
        return AlphaBeta(0.0, 0.0, gamma, spec.fabric.collective_overhead_s, float("inf"))
    if spec.fabric.topology == "switch":
        up = [l for l in topology.links if l.dst < 0]
        alpha = up[0].latency * 2
        beta = 1.0 / up[0].bandwidth
        egress = up[0].bandwidth
    else:
        # Cores move in lockstep, so each step waits for the slowest neighbour link.
        alpha = max(l.latency for l in topology.links)
        beta = 1.0 / min(l.bandwidth for l in topology.links)
        out_bw: dict[int, float] = {}
        for link in topology.links:
            out_bw[link.src] = out_bw.get(link.src, 0.0) + link.bandwidth
        egress = max(out_bw.values())
    return AlphaBeta(alpha, beta, gamma, spec.fabric.collective_overhead_s, egress)


def lower_bound(op: str, p: int, nbytes: float, model: AlphaBeta) -> float:
    """No algorithm can be faster: the bytes that must leave some core, at its full egress.

    All-reduce: each core must send 2(p-1)/p of the vector (its share of reduce-scatter and
    of all-gather); reduce-scatter, all-gather and all-to-all (p-1)/p; broadcast: the root
    must send the vector once.
    """
    if p <= 1 or nbytes == 0:
        return 0.0
    return egress_share(op, p) * nbytes / model.egress


def egress_share(op: str, p: int) -> float:
    """The fraction of the vector each core must send (nccl-tests' busbw factor)."""
    return {
        "allreduce": 2 * (p - 1) / p,
        "reducescatter": (p - 1) / p,
        "allgather": (p - 1) / p,
        "alltoall": (p - 1) / p,
        "broadcast": 1.0,
    }[op]
