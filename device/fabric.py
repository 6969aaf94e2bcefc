"""The fabric between cores as a discrete-event (SimPy) model that moves real bytes.

Collectives reach the fabric only through the narrow `Transport` interface: `send`, `recv`
and `now`. `Fabric` implements it with SimPy: every link direction carries one message at a
time for `N / bandwidth`, in the order the messages' heads reach it (first come, first
served: a message takes the link when it is next free, without an event of its own for
the queue); a message's head moves to the next hop of its route after the hop's latency
(virtual cut-through). So on an idle fabric a transfer of N bytes over one link takes
`latency + N / bandwidth`, over a route `sum(latency) + N / slowest bandwidth`; transfers
on disjoint links overlap.

The receiver gets a copy of the sender's buffer, checked against the CRC-32 the sender
computed. With faults injected, a lost message is noticed by a timeout and a corrupted one
by its checksum; either is sent again, up to a limit, after which `FabricFault` names the
link and the step. A hook sees every transfer, for traces.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import simpy

from tilesim.device.faults import FaultInjector, FaultSpec, link_end
from tilesim.device.spec import FabricSpec
from tilesim.device.topology import Topology
from tilesim.errors import FabricFault


class Transport(Protocol):
    """What a collective needs from a fabric: the discrete-event `Fabric` and the closed-form
    `AnalyticFabric` both satisfy it, and `collectives.execute._stream` is the one interpreter
    of a schedule over either (its two drivers make time pass their own way).

    `send` posts a message and returns what the driver waits on (an event, or the arrival
    time); `recv` returns what delivers the payload (an event, or (arrival, payload) / None
    when it has not been sent); `topology` gives routes, for the cost of reducing as bytes
    stream in."""

    topology: Topology

    @property
    def now(self) -> float: ...

    def send(self, src: int, dst: int, tag: Any, payload: np.ndarray | None, nbytes: int, copy: bool = True) -> Any: ...

    def recv(self, dst: int, src: int, tag: Any) -> Any: ...


@dataclass(frozen=True)
class TransferRecord:
    """One attempt to move a message, for traces: times in seconds of simulated time."""

    src: int
    dst: int
    tag: Any
    nbytes: int
    links: tuple[str, ...]
    start: float  # when the bytes began to stream (after any queueing)
    end: float  # when they arrived (or were found lost)
    queued: float  # when the send was posted
    attempt: int
    outcome: str  # "ok", "lost", "corrupt"


def checksum(payload: np.ndarray | None) -> int:
    if payload is None:
        return 0
    return zlib.crc32(np.ascontiguousarray(payload).view(np.uint8).reshape(-1))


class Fabric:
    """A SimPy model of the links among `cores` cores; implements `Transport`."""

    def __init__(
        self,
        spec: FabricSpec,
        cores: int,
        env: simpy.Environment | None = None,
        faults: FaultSpec | None = None,
        on_transfer: Callable[[TransferRecord], None] | None = None,
    ):
        self.env = env or simpy.Environment()
        self.topology = Topology(spec, cores)
        self.cores = cores
        self.faults = FaultInjector(faults) if faults is not None and faults.active else None
        self.on_transfer = on_transfer
        # when each link direction is next free: a message takes a link at the later of its
        # head's arrival and that time, so messages cross a link in the order they reach it
        self._free_at = {link.id: 0.0 for link in self.topology.links}
        self._mailboxes: dict[tuple[int, int, Any], simpy.Store] = {}

    @property
    def now(self) -> float:
        return self.env.now

    def _mailbox(self, dst: int, src: int, tag: Any) -> simpy.Store:
        key = (dst, src, tag)
        box = self._mailboxes.get(key)
        if box is None:
            box = self._mailboxes[key] = simpy.Store(self.env)
        return box

    def send(
        self, src: int, dst: int, tag: Any, payload: np.ndarray | None, nbytes: int, copy: bool = True
    ) -> simpy.Process:
        """Post a message; the returned event fires once it has been delivered.

        The sender does not wait: the bytes are copied now (unless `copy=False`: the caller
        hands over a buffer it will not touch), so it may reuse its buffer. `payload` is None
        in timing-only runs; `nbytes` is what crosses the links.
        """
        snapshot = np.array(payload, copy=True) if copy and payload is not None else payload
        return self.env.process(self._deliver(src, dst, tag, snapshot, int(nbytes)))

    def recv(self, dst: int, src: int, tag: Any) -> simpy.events.Event:
        """An event whose value is the payload of the message `tag` from `src` to `dst`."""
        return self._mailbox(dst, src, tag).get()

    def _deliver(self, src: int, dst: int, tag: Any, payload: np.ndarray | None, nbytes: int):
        route = self.topology.route(src, dst)
        # Only a fabric that flips bits needs the checksum that finds them: over 64 MiB messages
        # the CRCs took a fifth of a collective's run.
        flips = self.faults is not None and self.faults.spec.corrupt > 0
        crc = checksum(payload) if flips else 0
        posted = self.env.now
        attempts = 1 + (self.faults.spec.max_retries if self.faults else 0)
        for attempt in range(1, attempts + 1):
            start = yield from self._stream(route, nbytes)
            latency = sum(link.latency for link in route)
            bandwidth = min((self._bandwidth(link) for link in route), default=np.inf)
            outcome, arrived, bad_link = self._cross(route, payload, tag)
            if flips and outcome == "ok" and arrived is not None and checksum(arrived) != crc:
                outcome = "corrupt"
            if self.on_transfer:
                record = TransferRecord(
                    src, dst, tag, nbytes, tuple(l.name for l in route), start, self.env.now, posted, attempt, outcome
                )
                self.on_transfer(record)
            if outcome == "ok":
                self._mailbox(dst, src, tag).put(arrived)
                return
            if attempt == attempts:
                dead = self.faults is not None and bad_link is not None and self.faults.is_dead(bad_link)
                why = (
                    "is dead" if dead else f"{'lost' if outcome == 'lost' else 'corrupted'} the message {attempt} times"
                )
                raise FabricFault(
                    f"link {_link_name(bad_link)} {why}: transfer {src}->{dst} of {nbytes} bytes at step "
                    f"{_step_of(tag)} failed after {attempt} attempts; the collective is abandoned"
                )
            # A corrupt message is refused at once (NACK back over the route); a lost one is
            # noticed when the acknowledgement does not come within twice the transfer time.
            wait = latency if outcome == "corrupt" else 2 * (latency + nbytes / bandwidth)
            yield self.env.timeout(wait)

    def _stream(self, route, nbytes: int):
        """Move one message hop by hop (virtual cut-through); returns when it started.

        Each hop waits until its link is free, holds it for `nbytes / bandwidth`, and lets
        the head go on after the hop's latency, so no message holds one link while waiting
        for the next (no deadlock on rings) and an idle route takes `sum(latency) +
        nbytes / slowest bandwidth`.
        """
        start = arrival = self.env.now
        remaining_latency = sum(link.latency for link in route)
        for k, link in enumerate(route):
            busy = nbytes / self._bandwidth(link)
            granted = yield from self._take(link, busy)
            if k == 0:
                start = granted
            arrival = max(arrival, granted + busy + remaining_latency)
            remaining_latency -= link.latency
            if k < len(route) - 1:
                yield self.env.timeout(link.latency)
        if arrival > self.env.now:
            yield self.env.timeout(arrival - self.env.now)
        return start

    def _take(self, link, busy: float):
        """Wait for `link` and hold it for `busy` seconds; returns when it was taken. It is
        reserved at once, so messages take it in the order their heads arrive."""
        granted = max(self.env.now, self._free_at[link.id])
        self._free_at[link.id] = granted + busy
        if granted > self.env.now:
            yield self.env.timeout(granted - self.env.now)
        return granted

    def _bandwidth(self, link) -> float:
        if self.faults is None:
            return link.bandwidth
        return link.bandwidth / self.faults.slow_factor((link.src, link.dst))

    def _cross(self, route, payload, tag):
        """Apply each crossed link's faults: ("ok" | "lost", what arrived, the link to blame).

        A flipped bit is not reported here: the receiver finds it by its checksum.
        """
        if self.faults is None:
            return "ok", payload, None
        data, blame = payload, None
        for link in route:
            key = (link.src, link.dst)
            if self.faults.lost_on(key, str(tag)):
                return "lost", None, key
            corrupted = self.faults.corrupt(key, data, str(tag))
            if corrupted is not data and blame is None:
                blame = key
            data = corrupted
        return "ok", data, blame

    def run(self, until: float | None = None) -> None:
        self.env.run(until=until)


def _link_name(link: tuple[int, int] | None) -> str:
    if link is None:
        return "?"
    return "->".join(link_end(end) for end in link)


def _step_of(tag: Any) -> Any:
    """Collective tags are (step, chunk, ...) tuples; name the step in errors."""
    return tag[0] if isinstance(tag, tuple) and tag else tag
