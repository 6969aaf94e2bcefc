"""The memory plan of every core, made before anything is loaded.

Per core: the weight slices it holds, a KV cache of `max_context` positions per sequence
(a fixed buffer, as the real toolchains keep it), and the activations of the largest step,
packed by liveness (a buffer whose last reader has run is reused by a later one, greedy by
size). Each kind goes to the memory the device's placement names; activations that do not
fit in tile memory fall back to off-chip memory when the core has it. A model that does not
fit raises OutOfTileMemory (or OutOfOffchipMemory) with the per-core totals, before any weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tilesim.device.device import Device
from tilesim.device.memory import ALIGNMENT, Block
from tilesim.errors import OutOfOffchipMemory, OutOfTileMemory
from tilesim.runtime.graph import DecoderGraph
from tilesim.runtime.ops import IN_PLACE_OPS
from tilesim.runtime.pipeline import Stages
from tilesim.runtime.program import Buffer, Program
from tilesim.units import fmt_bytes

__all__ = ["IN_PLACE_OPS", "MemoryPlan", "activation_layout", "lifetimes", "live_bytes", "place", "plan_memory"]


def aligned(nbytes: int) -> int:
    return max(ALIGNMENT, (int(nbytes) + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT)


@dataclass
class ActivationLayout:
    """Where each activation lives inside one core's activation block, and its 2-D shape."""

    offsets: dict[str, int]
    shapes: dict[str, tuple[int, int]]
    total: int


@dataclass
class MemoryPlan:
    """Bytes per core by kind, the regions they go to, and the activation layouts."""

    weights: list[int]
    kv_cache: list[int]
    activations: list[int]
    regions: dict[str, str]  # kind -> region
    layouts: list[ActivationLayout]
    notes: list[str] = field(default_factory=list)
    reserved: dict[str, int] = field(default_factory=dict)  # per core: the runtime's categories (CoreSpec.reserved)
    kv_kind: str = "kv_cache"  # or "recurrent_state" (RWKV): what `kv_cache` holds

    def per_core(self, core: int) -> dict[str, int]:
        return {
            "weights": self.weights[core],
            self.kv_kind: self.kv_cache[core],
            "activations": self.activations[core],
            **self.reserved,
        }


def plan_memory(
    program: Program,
    device: Device,
    *,
    batch: int,
    prefill_tokens: int,
    weight_sizes: dict[str, list[list[int]]],
    kv_sizes: list[list[int]],
    all_logits: bool = False,
    prefill_batch: int | None = None,
    programs: int = 1,
    kv_kind: str = "kv_cache",
) -> MemoryPlan:
    """Plan every core's memory; raises OutOfTileMemory (with per-core totals) if it cannot fit.

    `weight_sizes[param][core]` lists the bytes of each array the weight is stored as on that
    core; `kv_sizes[core]` those of one layer's KV cache. `prefill_batch` is how many
    sequences the largest prefill step holds (default: all `batch`; a server that prefills
    one request at a time while `batch` decode needs far fewer rows). `programs`: the
    compiled programs (buckets), each holding `CoreSpec.program_bytes` on every core.
    """
    graph, tp, stages = program.graph, program.tp, program.stages
    pipe = program.pipeline
    rows = max(batch, (batch if prefill_batch is None else prefill_batch) * prefill_tokens)  # of the largest step
    weights, kv = [], []
    for stage in range(stages.pp):
        held = [p for p in weight_sizes if stage in pipe.param_stages.get(p, (0,))]
        for lane in range(tp):
            weights.append(sum(aligned(n) for p in held for n in weight_sizes[p][lane]))
            kv.append(stages.layers[stage] * sum(aligned(n) for n in kv_sizes[lane]))
    # cores whose activations have the same widths have the same layout: plan each kind once
    by_widths: dict[tuple, ActivationLayout] = {}
    layouts = []
    for core in range(stages.cores):
        stage, lane = divmod(core, tp)
        key = (stage, *(widths[lane] for widths in program.sp.widths.values()))
        if key not in by_widths:
            by_widths[key] = activation_layout(program, lane, rows, batch, all_logits, stage)
        layouts.append(by_widths[key])
    activations = [layout.total for layout in layouts]
    regions = dict(device.spec.placement)
    reserved = {name: aligned(n) for name, n in device.spec.core.reserved.items()}
    if device.spec.core.program_bytes:
        reserved["compiled_programs"] = programs * aligned(device.spec.core.program_bytes)
    regions.update(dict.fromkeys(reserved, "offchip" if device.spec.core.offchip_bytes else "tiles"))
    regions.setdefault("recurrent_state", regions["kv_cache"])
    plan = MemoryPlan(weights, kv, activations, regions, layouts, reserved=reserved, kv_kind=kv_kind)
    _fit(plan, graph, device, stages)
    return plan


def buffers(plan: MemoryPlan) -> list[dict[str, Buffer]]:
    """Every core's activation buffers, as the Program carries them (`Program.assign`): the
    layout's offsets and shapes, fp32 (16-bit activations are rounded in place), in the
    region the plan put activations in."""
    region = plan.regions["activations"]
    by_layout: dict[int, dict[str, Buffer]] = {}  # cores alike share one layout, and one map
    for layout in plan.layouts:
        if id(layout) not in by_layout:
            by_layout[id(layout)] = {
                name: Buffer(name, layout.shapes[name], "float32", region, offset)
                for name, offset in layout.offsets.items()
            }
    return [by_layout[id(layout)] for layout in plan.layouts]


def lifetimes(program: Program) -> tuple[dict[str, int], dict[str, int]]:
    """For each activation, the index of the node that makes it and of its last reader."""
    first, last = {}, {}
    count = 0
    for i, node, _ in program.nodes():
        for name in node.inputs:
            if name in first:
                last[name] = i
        if node.out and node.op not in IN_PLACE_OPS and node.out not in first:
            first[node.out] = last[node.out] = i
        count = i + 1
    last[program.graph.output] = count
    return first, last


def activation_layout(
    program: Program, core: int, rows: int, batch: int, all_logits: bool, stage: int = 0
) -> ActivationLayout:
    """Offsets of the activations lane `core` of `stage` holds, for a step of `rows` token
    rows, by liveness; a value of row class `last` has one row per sequence (unless every
    position's logits are kept)."""
    first, last = lifetimes(program)
    held = program.pipeline.value_stage
    first = {name: made for name, made in first.items() if held.get(name, 0) == stage}
    row_class = program.row_class()
    shapes = {}
    for name, made in first.items():
        n_rows = batch if row_class[made] == "last" and not all_logits else program.sp.value_rows(name, rows)
        shapes[name] = (n_rows, program.sp.widths[name][core])
    order = sorted(first, key=lambda v: -shapes[v][0] * shapes[v][1])
    # the values placed so far, as columns: offset, end, first and last node
    placed = np.zeros((4, len(order)), dtype=np.int64)
    offsets = {}
    for count, name in enumerate(order):
        size = aligned(shapes[name][0] * shapes[name][1] * 4)
        o, e, f, l = placed[:, :count]
        alive = ~((l < first[name]) | (last[name] < f))  # lifetimes that overlap this value's
        busy = np.lexsort((e[alive], o[alive]))
        offset = 0
        for start, end in zip(o[alive][busy].tolist(), e[alive][busy].tolist(), strict=True):
            if offset + size <= start:
                break
            offset = max(offset, end)
        placed[:, count] = (offset, offset + size, first[name], last[name])
        offsets[name] = offset
    total = int(placed[1].max()) if len(order) else 0
    return ActivationLayout(offsets, shapes, aligned(total))


def live_bytes(program: Program, layout: ActivationLayout) -> list[tuple[int, int]]:
    """(node index, bytes of activations alive while it runs) for every node of one core."""
    first, last = lifetimes(program)
    nodes = len(program.sp.nodes)
    change = np.zeros(nodes + 2, dtype=np.int64)
    for name, (r, w) in layout.shapes.items():
        size = aligned(r * w * 4)
        change[first[name]] += size
        change[last[name] + 1] -= size
    alive = np.cumsum(change)
    return [(i, int(alive[i])) for i in range(nodes)]


def _layer_range(stages: Stages, stage: int) -> str:
    first = sum(stages.layers[:stage])
    return f"{first}-{first + stages.layers[stage] - 1}"


def _fit(plan: MemoryPlan, graph: DecoderGraph, device: Device, stages: Stages) -> None:
    tp = stages.tp
    spec = device.spec.core
    capacity = {"tiles": spec.tile_memory_bytes, "offchip": spec.offchip_bytes}
    worst = max(range(len(plan.weights)), key=lambda c: sum(plan.per_core(c).values()))
    need = {"tiles": 0, "offchip": 0}
    for kind, nbytes in plan.per_core(worst).items():
        need[plan.regions[kind]] += nbytes
    # Activations that overflow tile memory go off-chip even when off-chip memory is short too:
    # off-chip is then where the run does not fit, and its error counts them beside the weights
    # and the KV cache (they were reported as gigabytes of a tile memory of megabytes).
    if need["tiles"] > capacity["tiles"] and plan.regions["activations"] == "tiles" and capacity["offchip"]:
        moved = plan.activations[worst]
        plan.regions["activations"] = "offchip"
        need["tiles"] -= moved
        need["offchip"] += moved
        plan.notes.append(
            f"the largest step's activations, every value it holds live ({fmt_bytes(moved)} per core), do not "
            "fit in tile memory: laid out off-chip (the timing keeps a step's hidden states on chip while they fit)"
        )
    for region in ("offchip", "tiles"):  # off-chip first: there, the weights are what does not fit
        if need[region] > capacity[region]:
            label = {"weights": "weights", "kv_cache": "KV cache", "activations": "activations",
                     "recurrent_state": "recurrent state"}  # fmt: skip
            parts = ", ".join(
                f"{label.get(kind, kind.replace('_', ' '))} {fmt_bytes(n)}"
                for kind, n in plan.per_core(worst).items()
                if plan.regions[kind] == region
            )
            where = "tile memory" if region == "tiles" else "off-chip memory"
            more = " or `pp`" if stages.pp > 1 else ""
            error = OutOfTileMemory if region == "tiles" else OutOfOffchipMemory
            name = graph.label  # the model as its user named it
            stage = ""
            if stages.pp > 1:
                stage = f" (pipeline stage {worst // tp}, layers {_layer_range(stages, worst // tp)})"
            cores, most = _cores_needed(plan, region, capacity[region]), device.spec.max_cores
            if cores is not None and most is not None and cores > most:  # more cores cannot help
                advice = (
                    f"by size alone it needs at least {cores} cores, and {device.name} has at most {most}: use a "
                    "device with more memory, a smaller `max_context` or `batch`, or smaller weights (`dtype`)"
                )
            else:
                advice = (
                    f"use a higher `tp`{more}{f' (by size alone at least {cores} cores)' if cores else ''}, a "
                    "smaller `max_context` or `batch`, or a device with more memory"
                )
            raise error(
                f"{name} does not fit on {len(plan.weights)} core(s) of {device.name}: core {worst}{stage} needs "
                f"{fmt_bytes(need[region])} of {where} ({parts}) but has {fmt_bytes(capacity[region])}; {advice}"
            )


def _cores_needed(plan: MemoryPlan, region: str, capacity: int) -> int | None:
    """By size alone: every core's tensors over what one core has beside its runtime's own."""
    own = sum(n for kind, n in plan.reserved.items() if plan.regions[kind] == region)
    tensors = sum(
        n for core in range(len(plan.weights)) for kind, n in plan.per_core(core).items()
        if plan.regions[kind] == region and kind not in plan.reserved
    )  # fmt: skip
    return -(-tensors // (capacity - own)) if capacity > own else None


def place(plan: MemoryPlan, device: Device, core: int, kind: str, nbytes: int, name: str) -> Block:
    """Allocate one planned tensor on a core, in the region the plan chose for its kind."""
    return device.cores[core].memory.allocate(nbytes, name, kind, plan.regions[kind])
