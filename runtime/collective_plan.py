"""The collectives of a Program, per operation and size: the algorithm (the one named, for the
collectives it can do; else chosen by size), its schedule (built once), and the time the
discrete-event fabric gives it. An algorithm is named for the all-reduces: a halving-doubling
or tree all-reduce has no all-gather, which the logits' gather needs, so that one is chosen.

The step timer and the executor share one `CollectivePlan`: the timer takes the time and the
transfers, the executor records the same schedule's data moves and replays them, so the
bytes that move are the ones that were timed.
"""

from __future__ import annotations

from dataclasses import dataclass

from tilesim.collectives import ALGORITHMS, choose_algorithm
from tilesim.collectives.api import schedule_for, simulate
from tilesim.collectives.schedule import Schedule
from tilesim.device.device import Device
from tilesim.device.fabric import TransferRecord


@dataclass(frozen=True)
class Planned:
    algo: str
    schedule: Schedule
    seconds: float  # on an idle fabric, the fixed per-collective overhead included
    transfers: tuple[TransferRecord, ...]


# Plans are shared by every CollectivePlan of the same fabric (its spec, the bandwidth the
# reductions run at, cores, element size, region, algorithm choice): a sweep or a fit that
# builds many devices with the same fabric simulates each collective once.
_SHARED: dict[tuple, dict[tuple[str, int], Planned]] = {}
_SHARED_LIMIT = 256


class CollectivePlan:
    """`get(op, n)`: the planned collective of n activation elements per core (cached)."""

    def __init__(self, device: Device, cores: int, itemsize: int, region: str, algo: str = "auto"):
        self.device, self.cores, self.itemsize, self.region, self.algo = device, cores, itemsize, region, algo
        key = (device.spec.fabric, device.spec.core.bandwidth(region), cores, itemsize, region, algo)
        if key not in _SHARED and len(_SHARED) >= _SHARED_LIMIT:
            _SHARED.clear()
        self._planned = _SHARED.setdefault(key, {})

    def get(self, op: str, n: int) -> Planned:
        key = (op, n)
        if key not in self._planned:
            p, size, region = self.cores, self.itemsize, self.region
            named = self.algo != "auto" and op in ALGORITHMS[self.algo].OPS
            algo = self.algo if named else choose_algorithm(self.device, op, p, n, size, 0, region)
            seconds, transfers = simulate(self.device, op, algo, p, n, size, region)
            self._planned[key] = Planned(algo, schedule_for(op, algo, p, n, 0, size), seconds, transfers)
        return self._planned[key]
