"""How long one step of a compiled program takes on the modelled device, and where the time goes.

A step has a static shape (`StepShape`): prefill of `tokens` positions per sequence (the
compiled bucket), or one decode token attending to `context` cached positions (the bucket).
Timing does not depend on data, so each shape is timed once and reused; the one exception
is a mixture of experts in a functional run, whose step is timed with the routing the data
produced (`time(shape, routing)`: the experts' work per core and the experts read).

Execution is bulk-synchronous, as on the devices modelled: between collectives every core
runs its kernels back to back (each kernel's time from the roofline in device/cost.py);
at a collective all cores wait for the slowest, then the collective takes the time the
discrete-event fabric gives its algorithm and size. The critical path of a step is, for
each stretch between collectives, the slowest core's kernels, then the collective: its
spans add up to the step's latency. The host's part (`HostSpec`: launching the step's program,
sampling each sequence, a request's setup before its prefill) is on the critical path too,
and a prefill of more sequences than the runtime's context batch runs as programs in turn.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from dataclasses import dataclass, field

import numpy as np

from tilesim.collectives.schedule import bounds
from tilesim.device.cost import kernel_time
from tilesim.device.device import Device
from tilesim.device.fabric import TransferRecord
from tilesim.device.topology import Topology
from tilesim.errors import GenerationError
from tilesim.profiler.events import Messages, Span
from tilesim.runtime.collective_plan import CollectivePlan, Planned
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
    new_request: bool = True  # a prefill that starts its request pays its setup (a later chunk of it does not)

    @property
    def rows(self) -> int:
        return self.batch * self.tokens


@dataclass
class StepTiming:
    shape: StepShape
    latency: float
    spans: list[Span] = field(default_factory=list)
    messages: list[Messages] = field(default_factory=list)
    stage_ends: list[float] = field(default_factory=list)  # when each pipeline stage's last node ended


def _shifted(span: Span, by: float) -> Span:
    """A copy of `span` `by` seconds later (without dataclasses.replace's checks: many spans)."""
    out = object.__new__(Span)
    out.__dict__.update(span.__dict__, start=span.start + by, end=span.end + by)
    return out


def _critical_cells(ends: list[list[float]], launch: float) -> set[tuple[int, int]]:
    """The (stage, micro-batch) cells on the pipeline's critical path, from the last back:
    each cell waited for whichever of its two predecessors ended later."""
    s, m = len(ends) - 1, len(ends[0]) - 1
    cells = set()
    while s >= 0 and m >= 0:
        cells.add((s, m))
        up = ends[s - 1][m] if s else launch
        left = ends[s][m - 1] if m else launch
        if s == 0 and m == 0:
            break
        if (up >= left and s > 0) or m == 0:
            s -= 1
        else:
            m -= 1
    return cells


def bucket(n: int, smallest: int = 16, largest: int | None = None) -> int:
    """The compiled size for n: the next power of two, at least `smallest`, at most `largest`."""
    size = max(smallest, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return min(size, largest) if largest else size


def kv_context(needed: int, limit: int | None, what: str = "the prompt and new tokens") -> int:
    """The KV cache's positions for a run that needs `needed` (`what` needs them: the prompt
    and new tokens): the next power of two, at least 256, within the model's `limit` (None: no
    limit, for rotary positions; see `position_limit`). The one rule every caller uses: the
    command line, sweeps, fidelity."""
    if limit is None:
        return bucket(needed, 256)
    if needed > limit:
        raise GenerationError(f"{what} need {needed} positions; the model has {limit}")
    return bucket(needed, 256, limit)


def context_for(graph, needed: int, asked: int | None = None, what: str = "the prompt and new tokens") -> int:
    """The KV context of a run of `graph` that needs `needed` positions (`what` needs them):
    `asked` if given, else `kv_context` within the graph's `position_limit`."""
    return asked if asked is not None else kv_context(needed, position_limit(graph), what)


def beyond_training(graph, positions: int, subject: str) -> str | None:
    """The warning for a run of `positions` positions past those `graph` was trained for
    (`subject` says whose positions: "max_context=8192 is"), or None within them."""
    extended = graph.meta.get("extended_positions", 0)
    if positions <= max(graph.max_positions, extended):
        return None
    if extended > graph.max_positions:
        return f"{subject} beyond the {extended} positions {graph.label}'s YaRN scaling extends its context to"
    return (
        f"{subject} beyond the {graph.max_positions} positions {graph.label} was trained for (rotary positions and "
        "ALiBi biases extend; quality there is not known)"
    )


def position_limit(graph) -> int | None:
    """The most positions a run of `graph` may use: its learned position table's rows, or
    None for rotary positions, ALiBi biases and recurrent models (RWKV), which extend past the
    config's `max_position_embeddings` (transformers-neuronx runs Llama-2 at 8k on a 4k config;
    quality beyond is the user's call)."""
    relative = any(n.op == "rope" or (n.op == "attention" and n.attrs.get("alibi") is not None) for n in graph.nodes)
    return None if relative or graph.meta.get("recurrent") else graph.max_positions


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
        *,
        spans: bool = True,
        moe_imbalance: float = 1.0,
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
        self._classes: list[int] | None = None
        self.spans = spans  # False: latencies only (fitting), no per-core spans
        # A fused layer keeps the residual stream (each row's hidden state) in tile memory from
        # kernel to kernel and streams every other operand through it in tiles, so a step's
        # activations stay on chip while its rows' hidden states fit (docs/timing-model.md)
        self.residual_per_row = graph.hidden * self.act_bytes
        # timing-only mixtures of experts: the busiest expert-parallel core gets this many
        # times its uniform share of the routed rows (an assumption the report states)
        self.moe_imbalance = moe_imbalance
        self.routing: dict[int, np.ndarray] | None = None  # the step being timed: rows per expert, per layer
        self._routed: dict[tuple, StepTiming] = {}
        self._sends: dict[tuple[int, int], Planned] = {}
        self._topology: Topology | None = None

    def time(self, shape: StepShape, routing: dict[int, np.ndarray] | None = None) -> StepTiming:
        """The step's timing; `routing` (layer -> rows routed to each expert in this step, as
        the executor's `step_routing`) times a mixture of experts as the data routed it."""
        if routing:
            key = (shape, tuple((layer, tuple(c.tolist())) for layer, c in sorted(routing.items())))
            if key not in self._routed:
                if len(self._routed) >= 4096:
                    self._routed.clear()
                self.routing = routing
                try:
                    self._routed[key] = self._timed(shape)
                finally:
                    self.routing = None
            return self._routed[key]
        if shape not in self._cache:
            self._cache[shape] = self._timed(shape)
        return self._cache[shape]

    def _timed(self, shape: StepShape) -> StepTiming:
        collecting = gc.isenabled()
        gc.disable()  # tens of thousands of small spans: the collector would rescan them all
        try:
            return self._step(shape)
        finally:
            if collecting:
                gc.enable()

    def _step(self, shape: StepShape) -> StepTiming:
        """A step as the host runs it: a prefill bigger than the runtime's context batch runs
        as several programs in turn, each staged as the whole batch would be (the context
        program is compiled for the batch: docs/timing-model.md, "Activations"); a prefill
        starts its request (`HostSpec`)."""
        host = self.device.spec.host
        if shape.phase != "prefill":
            return self._program(shape)
        per = host.context_batch or shape.batch
        parts = [min(per, shape.batch - i) for i in range(0, shape.batch, per)]
        spans: list[Span] = []
        messages: list[Messages] = []
        clock = 0.0
        if host.request_overhead_s and shape.new_request:
            spans += self._host_spans("request", clock, host.request_overhead_s)
            clock += host.request_overhead_s
        timed: dict[int, StepTiming] = {}
        stage_ends: list[float] = []
        placement = self._placement(shape)
        for rows in parts:
            if rows not in timed:
                timed[rows] = self._program(dataclasses.replace(shape, batch=rows), placement)
            part = timed[rows]
            stage_ends = [clock + e for e in part.stage_ends]
            spans += [_shifted(s, clock) for s in part.spans] if clock else part.spans
            messages += [dataclasses.replace(m, offset=m.offset + clock) for m in part.messages]
            clock += part.latency
        return StepTiming(shape, clock, spans, messages, stage_ends)

    def _program(self, shape: StepShape, placement: dict[str, str] | None = None) -> StepTiming:
        """One compiled program: its nodes in turn, or with micro-batches through the stages."""
        stages = self.program.stages
        if stages.pp > 1 and stages.micro_batches > 1 and shape.batch > 1:
            return self._pipelined(shape, placement)
        return self._simulate(shape, placement)

    def _pipelined(self, shape: StepShape, placement: dict[str, str] | None = None) -> StepTiming:
        """The batch cut into micro-batches that flow through the stages (GPipe): micro-batch
        m starts on stage s when it has left stage s - 1 and micro-batch m - 1 has left stage
        s. Each micro-batch's stage times are those of its own program run alone."""
        stages, host = self.program.stages, self.device.spec.host
        pp, count = stages.pp, min(stages.micro_batches, shape.batch)
        cuts = bounds(shape.batch, count)
        sizes = [cuts[m + 1] - cuts[m] for m in range(count)]
        runs: dict[int, StepTiming] = {}
        for size in sizes:
            if size not in runs:
                runs[size] = self._simulate(dataclasses.replace(shape, batch=size), placement)
        launch = host.step_overhead_s
        starts = [[0.0] * count for _ in range(pp)]  # when micro-batch m began on stage s, in its own run
        ends = [[0.0] * count for _ in range(pp)]
        for m, size in enumerate(sizes):
            run = runs[size]
            for s in range(pp):
                began = run.stage_ends[s - 1] if s else launch
                ready = max(ends[s - 1][m] if s else launch, ends[s][m - 1] if m else launch)
                starts[s][m] = ready - began  # the shift of this stage's spans
                ends[s][m] = ready + run.stage_ends[s] - began
        end = ends[pp - 1][count - 1]
        spans: list[Span] = self._host_spans("launch", 0.0, launch) if launch else []
        messages: list[Messages] = []
        if self.spans:
            critical = _critical_cells(ends, launch)
            stage_of = self.program.pipeline.node_stage
            tp = stages.tp
            for m, size in enumerate(sizes):
                run = runs[size]
                for span in run.spans:
                    if span.lane == "host":
                        continue
                    s = span.core // tp
                    moved = _shifted(span, starts[s][m])
                    moved.critical = span.critical and (s, m) in critical
                    spans.append(moved)
                for msg in run.messages:
                    shift = starts[stage_of[msg.node]][m]
                    messages.append(dataclasses.replace(msg, offset=msg.offset + shift))
        if host.sample_s:
            spans += self._host_spans("sample", end, host.sample_s * shape.batch)
            end += host.sample_s * shape.batch
        stage_ends = [ends[s][count - 1] for s in range(pp)]
        return StepTiming(shape, end, spans, messages, stage_ends)

    def _host_spans(self, name: str, start: float, seconds: float) -> list[Span]:
        """Host work on the step's critical path: on every core's lane, critical on core 0's."""
        if not self.spans:
            return []
        return [
            Span(core, "host", name, "host", None, start, start + seconds, critical=core == 0)
            for core in range(self.program.cores)
        ]

    def _core_classes(self) -> list[int]:
        """For each core, the first core whose kernels cost the same (same local widths and
        weight shapes): each class is costed once per node."""
        first: dict[tuple, int] = {}
        out = []
        for core in range(self.sp.tp):
            key = (
                tuple(w[core] for w in self.sp.widths.values()),
                tuple(self.sp.local_shape(n, v.shape, core) for n, v in self.graph.params.items()),
            )
            out.append(first.setdefault(key, core))
        return out

    def _simulate(self, shape: StepShape, placement: dict[str, str] | None = None) -> StepTiming:
        """One program's timeline. Cores of one class (`_core_classes`) run the same kernels
        in the same time, so time is kept per class; spans are made per core."""
        p = self.sp.tp
        host = self.device.spec.host
        if self._classes is None:
            self._classes = self._core_classes()
        classes = self._classes
        reps = sorted(set(classes))
        spans: list[Span] = []
        messages: list[Messages] = []
        launch = host.step_overhead_s
        if launch:
            spans += self._host_spans("launch", 0.0, launch)
        ready = dict.fromkeys(reps, launch)
        overhead = self.device.spec.fabric.collective_overhead_s
        placement = placement or self._placement(shape)
        segment: dict[int, list[Span]] = {rep: [] for rep in reps}  # the kernels since the last collective
        stage_of = self.program.pipeline.node_stage
        stage, stage_ends = 0, []
        for index, node, row_class in self.program.nodes():
            rows = shape.batch if row_class == "last" and shape.logits != "all" else shape.rows
            while stage < stage_of[index]:
                stage_ends.append(max(ready.values()))
                stage += 1
            base = stage * p  # the first core of the node's stage
            entry = OPS[node.op]
            if entry.collective:
                op, n = self._collective_size(node, rows, shape)
                planned = self._send(node, n) if op == "send" else self.collectives.get(op, n)
                start = max(ready.values())
                if self.spans:
                    if planned.transfers:
                        group = 0 if op == "send" else base  # a send's records name its cores already
                        messages.append(Messages(index, start + overhead, planned.transfers, group))
                    slowest = max(reps, key=lambda c: ready[c])
                    for span in segment[slowest]:
                        span.critical = True
                    spans += self._collective_spans(node, index, op, n, planned, ready, classes, start, slowest, base)
                ready = dict.fromkeys(reps, start + planned.seconds)
                segment = {rep: [] for rep in reps}
                continue
            timed = {}
            for rep in reps:
                cost = entry.cost(self, node, rep, rows, shape)
                timed[rep] = (cost, kernel_time(self.device.spec.core, placement, cost))
            if self.spans:
                for core in range(p):
                    cost, t = timed[classes[core]]
                    start = ready[classes[core]]
                    span = Span(
                        base + core, "compute", cost.name, node.op_type, node.layer, start, start + t.total, cost.flops,
                        cost.total_bytes, t.bound, node=index, compute_s=t.compute, memory_s=t.memory,
                        overhead_s=t.overhead, sync_s=t.sync, exchange_s=t.exchange,
                    )  # fmt: skip
                    spans.append(span)
                    if core == classes[core]:
                        segment[core].append(span)
            for rep in reps:
                ready[rep] += timed[rep][1].total
        slowest = max(reps, key=lambda c: ready[c])
        for span in segment[slowest]:
            span.critical = True
        end = max(ready.values())
        stage_ends += [end] * (self.program.stages.pp - len(stage_ends))
        if host.sample_s:
            spans += self._host_spans("sample", end, host.sample_s * shape.batch)
            end += host.sample_s * shape.batch
        return StepTiming(shape, end, spans, messages, stage_ends)

    def _placement(self, shape: StepShape) -> dict[str, str]:
        """Where each kind of tensor is read from in this step: activations are staged in tile
        memory when the hidden states of the step's rows fit there, else they stream through
        off-chip memory (a 2048-token prefill of Llama-2-70b, 32 MiB of bf16 hidden states,
        spills out of a NeuronCore's 24 MiB SBUF; its 1024-token prefill and a decode step do not)."""
        placement = dict(self.device.spec.placement)
        staged = self.staged_rows()
        if staged is not None and shape.rows > staged:
            placement["activations"] = "offchip"
        return placement

    def staged_rows(self) -> int | None:
        """The most token rows a step can have and still read its activations from tile memory
        (their hidden states fit there); None when the placement does not depend on the rows."""
        core = self.device.spec.core
        if self.device.spec.placement["activations"] != "tiles" or not core.offchip_bytes:
            return None
        return int(core.tile_memory_bytes // self.residual_per_row)

    def _collective_spans(self, node, index, op, n, planned, ready, classes, start, slowest, base) -> list[Span]:
        """A collective's spans on the cores of its stage (a send's: on the receiving stage's)."""
        out = []
        name = f"recv from stage {node.attrs['src']}" if op == "send" else op
        op_type = "pipeline" if op == "send" else "collective"
        for core in range(self.sp.tp):
            waited = ready[classes[core]]
            if waited < start:
                out.append(Span(base + core, "wait", f"wait for {name}", "idle", node.layer, waited, start, node=index))
            out.append(
                Span(
                    base + core, "collective", name, op_type, node.layer, start, start + planned.seconds,
                    bytes=n * self.act_bytes, algo=planned.algo, critical=core == slowest, node=index,
                )
            )  # fmt: skip
        return out

    def _send(self, node: Node, n: int) -> Planned:
        """A pipeline send of `n` elements per lane: every lane's core on stage `src` to the
        same lane's core on stage `dst`, at once over the fabric (idle-fabric time of each
        route; the slowest sets the step), plus the fabric's fixed cost per transfer."""
        key = (node.attrs["src"], n)
        if key not in self._sends:
            stages, fabric = self.program.stages, self.device.spec.fabric
            if self._topology is None:
                self._topology = Topology(fabric, stages.cores)
            nbytes = n * self.act_bytes
            overhead = fabric.collective_overhead_s
            records, seconds = [], 0.0
            for lane in range(stages.tp):
                src, dst = stages.core(node.attrs["src"], lane), stages.core(node.attrs["dst"], lane)
                t = self._topology.transfer_time(src, dst, nbytes)
                links = tuple(link.name for link in self._topology.route(src, dst))
                records.append(TransferRecord(src, dst, "send", int(nbytes), links, 0.0, t, 0.0, 0, "ok"))
                seconds = max(seconds, t)
            self._sends[key] = Planned("p2p", None, overhead + seconds, tuple(records))
        return self._sends[key]

    def _collective_size(self, node: Node, rows: int, shape: StepShape) -> tuple[str, int]:
        if node.op == "allreduce":
            return "allreduce", rows * self.sp.widths[node.out][0]
        if node.op == "alltoall":  # expert parallel's exchange buffers, as the executor sizes them
            return "alltoall", self.sp.value_rows(node.inputs[0], rows) * self.sp.widths[node.inputs[0]][0]
        if node.op == "allgather":
            return "allgather", self.sp.value_rows(node.out, rows) * self.sp.widths[node.out][0]
        if node.op == "send":  # a pipeline send: each lane's rows, the widest lane's for the size
            return "send", self.sp.value_rows(node.out, rows) * max(self.sp.widths[node.out])
        # What leaves each core after its slice of the LM head, gathered to the host's sampler.
        per_seq = {"argmax": 2, "full": max(self.sp.widths[node.out])}.get(shape.logits)
        if shape.logits.startswith("topk:"):
            per_seq = 2 * int(shape.logits.split(":")[1])
        if shape.logits == "all":
            per_seq = max(self.sp.widths[node.out])
        return "allgather", rows * per_seq * self.sp.tp
