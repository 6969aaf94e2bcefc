"""Which links join which cores, and the route a transfer takes.

A `Link` is one direction of a physical connection (full duplex links are two `Link`s).
Topologies:
- `ring`: core i joins i-1 and i+1 (mod p); a transfer takes the shorter way round (ties go
  up, i -> i+1). With p = 2 the two neighbours are the same core: the up and the down link
  are two parallel physical links, as on a real ring of two.
- `torus2d`: p = rows x cols (the most nearly square factorisation, rows <= cols), with wrap
  links; routes go along the row first, then the column (dimension order), each the
  shorter way round.
- `switch`: every core has an uplink to and a downlink from a non-blocking switch; a
  transfer takes the sender's uplink then the receiver's downlink, and the quoted link
  latency is the whole one-way latency (half on each).

A core's `links_per_core` links are shared evenly among the directions it has (ring 2,
torus 4, switch 1 each way), so one `Link` may stand for several parallel lanes. When the
spec groups cores into chips, links between cores of the same chip use the chip's figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tilesim.device.faults import link_end
from tilesim.device.spec import FabricSpec


@dataclass(frozen=True)
class Link:
    """One direction of a connection: `src` -> `dst` (core ids, or -1 for the switch)."""

    id: int
    src: int
    dst: int
    bandwidth: float  # bytes/s, all lanes together
    latency: float  # seconds per hop
    name: str


def torus_shape(cores: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == cores, rows <= cols, as square as possible."""
    rows = math.isqrt(cores)
    while cores % rows:
        rows -= 1
    return rows, cores // rows


class Topology:
    """The links among `cores` cores of a fabric, and routes between any two cores."""

    def __init__(self, spec: FabricSpec, cores: int):
        self.spec = spec
        self.cores = cores
        self.links: list[Link] = []
        self._by_ends: dict[tuple[int, int, str], Link] = {}
        self._route_cache: dict[tuple[int, int], tuple[Link, ...]] = {}
        if cores > 1:
            getattr(self, f"_build_{spec.topology}")()

    def _add(self, src: int, dst: int, tag: str, lanes: int, half_latency: bool = False) -> None:
        chip = self.spec.chip
        same_chip = (
            chip is not None and src >= 0 and dst >= 0 and src // chip.cores_per_chip == dst // chip.cores_per_chip
        )
        bandwidth = (chip.link_bandwidth if same_chip else self.spec.link_bandwidth) * self.spec.bandwidth_efficiency
        latency = chip.link_latency if same_chip else self.spec.link_latency
        if half_latency:
            latency /= 2
        name = f"{link_end(src)}->{link_end(dst)}" + (
            f" ({tag})" if tag in ("up", "down") and self.spec.topology == "ring" else ""
        )
        link = Link(len(self.links), src, dst, bandwidth * lanes, latency, name)
        self.links.append(link)
        self._by_ends[(src, dst, tag)] = link

    def _build_ring(self) -> None:
        lanes = max(1, self.spec.links_per_core // 2)
        p = self.cores
        for i in range(p):
            self._add(i, (i + 1) % p, "up", lanes)
            self._add(i, (i - 1) % p, "down", lanes)

    def _build_torus2d(self) -> None:
        rows, cols = torus_shape(self.cores)
        lanes = max(1, self.spec.links_per_core // 4)
        for r in range(rows):
            for c in range(cols):
                i = r * cols + c
                if cols > 1:
                    self._add(i, r * cols + (c + 1) % cols, "x+", lanes)
                    self._add(i, r * cols + (c - 1) % cols, "x-", lanes)
                if rows > 1:
                    self._add(i, ((r + 1) % rows) * cols + c, "y+", lanes)
                    self._add(i, ((r - 1) % rows) * cols + c, "y-", lanes)

    def _build_switch(self) -> None:
        lanes = self.spec.links_per_core
        for i in range(self.cores):
            self._add(i, -1, "up", lanes, half_latency=True)
            self._add(-1, i, "down", lanes, half_latency=True)

    def route(self, src: int, dst: int) -> tuple[Link, ...]:
        """The links a transfer from core `src` to core `dst` crosses, in order."""
        if src == dst:
            return ()
        key = (src, dst)
        if key not in self._route_cache:
            self._route_cache[key] = tuple(getattr(self, f"_route_{self.spec.topology}")(src, dst))
        return self._route_cache[key]

    def _route_ring(self, src: int, dst: int) -> list[Link]:
        p = self.cores
        forward = (dst - src) % p
        step, tag = (1, "up") if forward <= p - forward else (-1, "down")
        hops, at = [], src
        while at != dst:
            hops.append(self._by_ends[(at, (at + step) % p, tag)])
            at = (at + step) % p
        return hops

    def _route_torus2d(self, src: int, dst: int) -> list[Link]:
        rows, cols = torus_shape(self.cores)
        hops = []
        r, c = divmod(src, cols)
        tr, tc = divmod(dst, cols)
        for size, axis in ((cols, "x"), (rows, "y")):
            here, there = (c, tc) if axis == "x" else (r, tr)
            forward = (there - here) % size
            sign = 1 if forward <= size - forward else -1
            while here != there:
                nxt = (here + sign) % size
                a = r * cols + here if axis == "x" else here * cols + c
                b = r * cols + nxt if axis == "x" else nxt * cols + c
                hops.append(self._by_ends[(a, b, f"{axis}{'+' if sign > 0 else '-'}")])
                here = nxt
            if axis == "x":
                c = tc
        return hops

    def _route_switch(self, src: int, dst: int) -> list[Link]:
        return [self._by_ends[(src, -1, "up")], self._by_ends[(-1, dst, "down")]]

    def transfer_time(self, src: int, dst: int, nbytes: float) -> float:
        """Seconds for `nbytes` from `src` to `dst` on an idle fabric (cut-through).

        Every hop adds its latency; the bytes stream at the slowest link's bandwidth.
        """
        route = self.route(src, dst)
        if not route:
            return 0.0
        return sum(link.latency for link in route) + nbytes / min(link.bandwidth for link in route)

    def hops(self, src: int, dst: int) -> int:
        return len(self.route(src, dst))
