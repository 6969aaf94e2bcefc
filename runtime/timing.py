"""How long one step of a compiled program takes on the modelled device, and where the time goes.

A step has a static shape (`StepShape`): prefill of `tokens` positions per sequence (the
compiled bucket), or one decode token attending to `context` cached positions (the bucket).
Timing never depends on data, so each shape is timed once and reused.

Execution is bulk-synchronous, as on the devices modelled: between collectives every core
runs its kernels back to back (each kernel's time from the roofline in device/cost.py);
at a collective all cores wait for the slowest, then the collective takes the time the
discrete-event fabric gives its algorithm and size. The critical path of a step is, for
each stretch between collectives, the slowest core's kernels, then the collective: its
spans add up to the step's latency.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field

from tilesim.device.cost import KernelTime
from tilesim.device.device import Device
from tilesim.errors import GenerationError
from tilesim.profiler.events import Messages, Span
from tilesim.runtime.collective_plan import CollectivePlan
from tilesim.runtime.graph import Node
from tilesim.runtime.ops import OPS
from tilesim.runtime.precision import Precision
from tilesim.runtime.program import Program


@dataclass(frozen=True)
class StepShape:
    phase: str  # "prefill" | "decode"
    batch: int
    tokens: int  # new tokens per sequence (the prefill bucket, or 1)
    context: int  # cached positions attended to by the last token (the bucket)
    logits: str = "argmax"  # what leaves the cores after the LM head: argmax | topk:K | full | all

    @property
    def rows(self) -> int:
        return self.batch * self.tokens


@dataclass
class StepTiming:
    shape: StepShape
    latency: float
    spans: list[Span] = field(default_factory=list)
    messages: list[Messages] = field(default_factory=list)


def bucket(n: int, smallest: int = 16, largest: int | None = None) -> int:
    """The compiled size for n: the next power of two, at least `smallest`, at most `largest`."""
    size = max(smallest, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return min(size, largest) if largest else size


def kv_context(needed: int, limit: int | None) -> int:
    """The KV cache's positions for a run that needs `needed` (prompt and new tokens): the
    next power of two, at least 256, within the model's `limit` (None: no limit, for rotary
    positions; see `position_limit`). The one rule every caller uses: the command line,
    sweeps, fidelity."""
    if limit is None:
        return bucket(needed, 256)
    if needed > limit:
        raise GenerationError(f"the prompt and new tokens need {needed} positions; the model has {limit}")
    return bucket(needed, 256, limit)


def context_for(graph, needed: int, asked: int | None = None) -> int:
    """The KV context of a run of `graph` that needs `needed` positions: `asked` if given,
    else `kv_context` within the graph's `position_limit`."""
    return asked if asked is not None else kv_context(needed, position_limit(graph))


def position_limit(graph) -> int | None:
    """The most positions a run of `graph` may use: its learned position table's rows, or
    None for rotary positions, which extend past the config's `max_position_embeddings`
    (transformers-neuronx runs Llama-2 at 8k on a 4k config; quality beyond is the user's call)."""
    return None if any(node.op == "rope" for node in graph.nodes) else graph.max_positions


class StepTimer:
    """Times steps of one Program on one device, caching each shape's timeline. It walks the
    Program's nodes and asks the op table for each one's cost (`ops.OPS`, `costs.py`)."""

    def __init__(
        self,
        program: Program,
        device: Device,
        weight_bytes: dict[str, float],
        precision: Precision,
        collectives: CollectivePlan,
        formats: dict[str, str] | None = None,
    ):
        self.program, self.graph, self.sp, self.device = program, program.graph, program.sp, device
        graph = self.graph
        self.weight_bytes = weight_bytes
        self.act_bytes = precision.act_bytes
        # int8 keys and values carry an fp32 scale per position and head
        self.kv_itemsize = precision.kv_bytes + (4.0 / graph.head_dim if precision.kv == "int8" else 0.0)
        self.collectives = collectives  # shared with the executor: the schedules it replays
        self.dtype = precision.compute_dtype
        self.precision, self.formats = precision, formats or {}  # formats: param -> storage format
        self._cache: dict[StepShape, StepTiming] = {}

    def time(self, shape: StepShape) -> StepTiming:
        if shape not in self._cache:
            collecting = gc.isenabled()
            gc.disable()  # tens of thousands of small spans: the collector would rescan them all
            try:
                self._cache[shape] = self._simulate(shape)
            finally:
                if collecting:
                    gc.enable()
        return self._cache[shape]

    def _simulate(self, shape: StepShape) -> StepTiming:
        p = self.sp.tp
        ready = [0.0] * p
        spans: list[Span] = []
        messages: list[Messages] = []
        overhead = self.device.spec.fabric.collective_overhead_s
        segment: list[list[Span]] = [[] for _ in range(p)]
        for index, node, row_class in self.program.nodes():
            rows = shape.batch if row_class == "last" and shape.logits != "all" else shape.rows
            entry = OPS[node.op]
            if entry.collective:
                op, n = self._collective_size(node, rows, shape)
                planned = self.collectives.get(op, n)
                algo, duration, moves = planned.algo, planned.seconds, planned.transfers
                start = max(ready)
                if moves:
                    messages.append(Messages(index, start + overhead, moves))
                slowest = max(range(p), key=lambda c: ready[c])
                for span in segment[slowest]:
                    span.critical = True
                for core in range(p):
                    if ready[core] < start:
                        spans.append(
                            Span(core, "wait", f"wait for {op}", "idle", node.layer, ready[core], start, node=index)
                        )
                    spans.append(
                        Span(
                            core,
                            "collective",
                            op,
                            "collective",
                            node.layer,
                            start,
                            start + duration,
                            bytes=n * self.act_bytes,
                            algo=algo,
                            critical=core == slowest,
                            node=index,
                        )
                    )
                ready = [start + duration] * p
                segment = [[] for _ in range(p)]
                continue
            for core in range(p):
                cost = entry.cost(self, node, core, rows, shape)
                t: KernelTime = self.device.kernel_time(cost)
                span = Span(
                    core,
                    "compute",
                    cost.name,
                    node.op_type,
                    node.layer,
                    ready[core],
                    ready[core] + t.total,
                    cost.flops,
                    cost.total_bytes,
                    t.bound,
                    node=index,
                    compute_s=t.compute,
                    memory_s=t.memory,
                    overhead_s=t.overhead,
                )
                spans.append(span)
                segment[core].append(span)
                ready[core] += t.total
        slowest = max(range(p), key=lambda c: ready[c])
        for span in segment[slowest]:
            span.critical = True
        return StepTiming(shape, max(ready), spans, messages)

    def _collective_size(self, node: Node, rows: int, shape: StepShape) -> tuple[str, int]:
        if node.op == "allreduce":
            return "allreduce", rows * self.sp.widths[node.out][0]
        # What leaves each core after its slice of the LM head, gathered to the host's sampler.
        per_seq = {"argmax": 2, "full": max(self.sp.widths[node.out])}.get(shape.logits)
        if shape.logits.startswith("topk:"):
            per_seq = 2 * int(shape.logits.split(":")[1])
        if shape.logits == "all":
            per_seq = max(self.sp.widths[node.out])
        return "allgather", rows * per_seq * self.sp.tp
