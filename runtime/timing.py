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

from tilesim.collectives import choose_algorithm
from tilesim.collectives.api import simulate
from tilesim.device.cost import KernelCost, KernelTime
from tilesim.device.device import Device
from tilesim.device.kernels.activations import activation_cost
from tilesim.device.kernels.attention import attention_cost, kv_write_cost
from tilesim.device.kernels.elementwise import add_cost, embed_cost
from tilesim.device.kernels.matmul import linear_cost
from tilesim.device.kernels.norms import norm_cost
from tilesim.device.kernels.rotary import rope_cost
from tilesim.profiler.events import Messages, Span
from tilesim.runtime.graph import DecoderGraph, Node
from tilesim.runtime.precision import Precision
from tilesim.runtime.shard import ShardPlan


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


class StepTimer:
    """Times steps of one sharded graph on one device, caching each shape's timeline."""

    def __init__(
        self,
        graph: DecoderGraph,
        sp: ShardPlan,
        device: Device,
        weight_bytes: dict[str, float],
        precision: Precision,
        act_region: str,
        algo: str = "auto",
        formats: dict[str, str] | None = None,
    ):
        self.graph, self.sp, self.device = graph, sp, device
        self.weight_bytes = weight_bytes
        self.act_bytes = precision.act_bytes
        # int8 keys and values carry an fp32 scale per position and head
        self.kv_itemsize = precision.kv_bytes + (4.0 / graph.head_dim if precision.kv == "int8" else 0.0)
        self.act_region = act_region
        self.algo = algo
        self.dtype = precision.compute_dtype
        self.precision, self.formats = precision, formats or {}  # formats: param -> storage format
        self._cache: dict[StepShape, StepTiming] = {}
        self._collective_cache: dict[tuple[str, int], tuple[str, float, tuple]] = {}

    def collective(self, op: str, n: int) -> tuple[str, float, tuple]:
        """(algorithm, seconds, fabric transfers) of a collective of n activation elements per core."""
        key = (op, n)
        if key not in self._collective_cache:
            p, size, region = self.sp.tp, self.act_bytes, self.act_region
            algo = self.algo if self.algo != "auto" else choose_algorithm(self.device, op, p, n, size, 0, region)
            self._collective_cache[key] = (algo, *simulate(self.device, op, algo, p, n, size, region))
        return self._collective_cache[key]

    def algorithm(self, op: str, n: int) -> str:
        return self.collective(op, n)[0]

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
        after = False
        for index, node in enumerate(self.sp.nodes):
            after = after or node.op == "select_last"
            rows = shape.batch if after and shape.logits != "all" else shape.rows
            if node.op in ("allreduce", "gather_logits"):
                op, n = self._collective_size(node, rows, shape)
                algo, duration, moves = self.collective(op, n)
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
                cost = self._cost(node, core, rows, shape)
                if cost is None:
                    continue
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

    def _cost(self, node: Node, core: int, rows: int, shape: StepShape) -> KernelCost | None:
        sp, g = self.sp, self.graph
        width = sp.widths
        a, dt = self.act_bytes, self.dtype
        if node.op in ("linear", "lm_head"):
            w = node.params[0]
            out_f, in_f = sp.local_shape(w, g.params[w].shape, core)
            name = "lm_head" if node.op == "lm_head" else w.rsplit(".", 2)[-2]
            wb = self.weight_bytes.get(w, 4.0)
            return linear_cost(
                rows,
                out_f,
                in_f,
                weight_bytes_per_elem=wb,
                act_bytes=a,
                bias=len(node.params) > 1,
                dtype=self.precision.product_dtype(self.formats.get(w, "fp32")),
                name=name,
            )
        n = rows * width[node.out][core] if node.out else 0
        if node.op == "embed":
            return embed_cost(
                rows, width[node.out][core], weight_bytes=self.weight_bytes.get(node.params[0], 4.0), act_bytes=a
            )
        if node.op == "norm":
            return norm_cost(rows, width[node.out][core], kind=node.attrs["kind"], act_bytes=a, dtype=dt)
        if node.op == "rope":
            d = g.head_dim
            heads = (width[node.inputs[0]][core] + width[node.inputs[1]][core]) // d
            return rope_cost(rows, heads, node.attrs["rot"], act_bytes=a, dtype=dt)
        if node.op == "attention":
            d = g.head_dim
            hq, hkv = width[node.inputs[0]][core] // d, width[node.inputs[1]][core] // d
            context = shape.context if shape.phase == "decode" else (shape.tokens + 1) / 2
            kv = kv_write_cost(shape.batch, shape.tokens, hkv, d, act_bytes=a, kv_bytes=self.kv_itemsize)
            att = attention_cost(
                shape.batch, shape.tokens, context, hq, hkv, d, act_bytes=a, kv_bytes=self.kv_itemsize, dtype=dt
            )
            traffic = {k: att.bytes.get(k, 0) + kv.bytes.get(k, 0) for k in ("kv_cache", "activations")}
            return KernelCost("attention", "attention", att.flops, dt, traffic)
        if node.op == "act":
            return activation_cost(n, kind=node.attrs["kind"], act_bytes=a, dtype=dt)
        if node.op == "swiglu":
            return activation_cost(n, kind="silu_mul", inputs=2, act_bytes=a, dtype=dt)
        if node.op in ("add", "bias", "add_positions"):
            return add_cost(n, act_bytes=a, dtype=dt)
        if node.op == "select_last":
            n = shape.batch * width[node.out][core]
            return KernelCost("select_last", "elementwise", 0.0, dt, {"activations": 2 * n * a})
        raise AssertionError(f"no cost for op {node.op}")
