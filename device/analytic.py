"""A closed-form stand-in for the fabric: no events, no link state, no contention.

Every transfer takes the idle-fabric time of its route, `sum(latency) + bytes / slowest
bandwidth`, from the moment it is posted. It offers the same three calls as the
discrete-event `Fabric` (`send`, `recv`, `now`); a driver sets `now` to the clock of the
core it is running. On schedules where no two transfers share a link at the same time it
gives exactly the discrete-event times; elsewhere it is a lower estimate (no queueing).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tilesim.device.spec import FabricSpec
from tilesim.device.topology import Topology


class AnalyticFabric:
    """Closed-form transfers among `cores` cores; `recv` returns None when nothing has come."""

    def __init__(self, spec: FabricSpec, cores: int):
        self.topology = Topology(spec, cores)
        self.now = 0.0
        self._messages: dict[tuple[int, int, Any], tuple[float, np.ndarray | None, int]] = {}

    def send(self, src: int, dst: int, tag: Any, payload: np.ndarray | None, nbytes: int, copy: bool = True) -> float:
        """Post a message at `now`; returns its arrival time. The receiver gets a copy of
        `payload` unless `copy=False` (the caller hands over a buffer it will not touch)."""
        arrival = self.now + self.topology.transfer_time(src, dst, nbytes)
        if copy and payload is not None:
            payload = np.array(payload, copy=True)
        self._messages[(dst, src, tag)] = (arrival, payload, nbytes)
        return arrival

    def recv(self, dst: int, src: int, tag: Any) -> tuple[float, np.ndarray | None] | None:
        """(arrival time, payload) of the message, or None if it has not been sent yet."""
        entry = self._messages.pop((dst, src, tag), None)
        return None if entry is None else (entry[0], entry[1])
