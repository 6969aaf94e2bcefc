"""The records the simulation emits and everything in the profiler consumes.

The runtime knows nothing of file formats: it hands over a `Trace` made of these plain
records, and exporters, reports and plots read them. Times are seconds of simulated
device time; the emulator's own wall-clock time is kept apart in `Trace.wall`.

A `Trace` holds one `StepRecord` per step (prefill, then each decode step). Steps of one
compiled shape share their `spans` (times relative to the step's start), so a long run
costs little memory until it is exported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class Span:
    """One interval on one core's lane: a kernel, a collective, waiting for a collective, or
    the host's part of a step (launch, sampling, a request's setup)."""

    core: int
    lane: str  # "compute" | "collective" | "wait" | "link" | "host"
    name: str
    op_type: str  # attention, mlp, norm, embedding, lm_head, residual, collective, idle
    layer: int | None
    start: float
    end: float
    flops: float = 0.0
    bytes: float = 0.0
    bound: str = ""  # "compute" | "memory" for kernels
    critical: bool = False
    algo: str = ""  # collectives: the algorithm that ran
    node: int = -1  # index of the program node
    compute_s: float = 0.0  # kernels: the roofline's compute term
    memory_s: float = 0.0  # kernels: the roofline's memory term
    overhead_s: float = 0.0  # kernels: the fixed per-kernel cost
    sync_s: float = 0.0  # kernels of bulk-synchronous cores: the superstep's sync
    exchange_s: float = 0.0  # and its exchange phase

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Transfer:
    """One message of a collective on the fabric (relative to its step), for flow arrows."""

    src: int
    dst: int
    start: float
    end: float
    nbytes: int
    link: str
    collective_node: int


@dataclass(frozen=True)
class Messages:
    """The fabric messages of one collective: a shared, cached record of its simulation.

    `messages` have `src`, `dst`, `start`, `end` (relative to `offset`), `nbytes` and `links`;
    they are expanded into `Transfer`s only when asked for, so a step of many collectives on
    many cores costs little until a trace is written.
    """

    node: int
    offset: float
    messages: tuple
    base: int = 0  # the first core of the group the collective ran on (a pipeline stage's)

    def transfers(self) -> Iterator[Transfer]:
        b = self.base
        for m in self.messages:
            link = m.links[0] if m.links else ""
            yield Transfer(m.src + b, m.dst + b, self.offset + m.start, self.offset + m.end, m.nbytes, link, self.node)


@dataclass
class StepRecord:
    """One step: when it started, how long it took, and its (shared) spans."""

    index: int
    phase: str  # "prefill" | "decode"
    start: float
    latency: float
    shape: dict[str, Any]
    spans: list[Span]
    messages: list[Messages] = field(default_factory=list)
    tokens: int = 0  # new tokens this step produced (over the batch)

    @property
    def transfers(self) -> Iterator[Transfer]:
        for collective in self.messages:
            yield from collective.transfers()

    def absolute_spans(self) -> Iterator[Span]:
        for span in self.spans:
            yield replace(span, start=self.start + span.start, end=self.start + span.end)


@dataclass
class MemorySnapshot:
    """Each core's memory as the planner placed it."""

    per_core: list[dict[str, int]]  # kind -> bytes (weights, kv_cache, activations)
    regions: dict[str, str]  # kind -> region (tiles | offchip)
    capacity: dict[str, int]  # region -> bytes per core
    peak: list[int]  # per core, all regions
    tile_usage: list[list[int]]  # per core, bytes on each tile
    tile_bytes: int
    tenants: list[list[tuple[int, list[tuple[str, int]]]]]  # per core: fullest tiles and their largest tenants
    live_activations: list[list[tuple[int, int]]] = field(default_factory=list)  # per core: (node, live bytes)
    notes: list[str] = field(default_factory=list)
    tile_kinds: list[dict[str, list[int]]] = field(default_factory=list)  # per core: category -> bytes on each tile


@dataclass
class Trace:
    """Everything one run recorded: steps, memory, the device, and the emulator's wall time."""

    device: dict[str, Any]
    model: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    memory: MemorySnapshot | None = None
    wall: dict[str, float] = field(default_factory=dict)

    def events(self) -> Iterator[Span]:
        for step in self.steps:
            yield from step.absolute_spans()

    @property
    def end(self) -> float:
        return max((s.start + s.latency for s in self.steps), default=0.0)
