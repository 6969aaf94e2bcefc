"""A session's placement: the KV cache and the activations of `batch` sequences, planned and
placed in every core's memory beside the weights (which stay across sessions).

The memory plan (`memplan.plan_memory`) raises OutOfTileMemory before anything is placed if
the model does not fit. Timing-only sessions place the same blocks and make no views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tilesim.device import memory
from tilesim.device.device import Device
from tilesim.device.memory import Block
from tilesim.errors import OutOfHostMemory
from tilesim.runtime import memplan
from tilesim.runtime.buckets import Buckets
from tilesim.runtime.kvcache import KVCache, RecurrentState, kv_arrays, state_arrays
from tilesim.runtime.program import Program
from tilesim.runtime.timing import StepShape
from tilesim.units import fmt_bytes


def prefill_shape(batch: int, tokens: int, max_context: int, gathered: str = "argmax") -> StepShape:
    """The step that prefills `tokens` positions of `batch` sequences in the default buckets."""
    return Buckets.make(max_context).prefill_shape(batch, tokens, gathered)


def decode_shape(batch: int, context: int, max_context: int, gathered: str = "argmax") -> StepShape:
    """The decode step whose longest sequence holds `context` positions, in the default buckets."""
    return Buckets.make(max_context).decode_shape(batch, context, gathered)


@dataclass
class Session:
    """What one batch size placed: the plan, and per lane (a core's place in its pipeline
    stage) the KV cache of every layer and the view of every activation, each in the memory
    of the core of its stage."""

    plan: memplan.MemoryPlan
    batch: int
    all_logits: bool
    prefill_batch: int
    kv: list[list[KVCache]]
    acts: list[dict[str, np.ndarray]]
    blocks: list[tuple[int, Block]] = field(default_factory=list)

    def free(self, device: Device) -> None:
        for core, block in self.blocks:
            device.cores[core].memory.free(block)
        self.blocks = []


def host_parts(
    plan: memplan.MemoryPlan, positions: int | None, max_context: int, written: str | None = None
) -> dict[str, int]:
    """What a run that computes holds of `plan` in this machine's memory, by kind. A core's
    memory commits a page when it is first written, and a sequence writes its cache position
    by position: `positions` of the `max_context` are counted (None: none yet, the check at
    placing, before any weight is read); a recurrent state is written whole. `written` says
    which positions those are, where they are not as many in every sequence."""
    recurrent = plan.kv_kind == "recurrent_state"
    share = 1.0 if recurrent else min(1.0, (positions or 0) / max_context)
    kv = "KV cache" + (f" for {written or f'{positions} positions a sequence'}" if positions else "")
    kv = "recurrent state" if recurrent else kv
    return {"weights": sum(plan.weights), kv: int(share * sum(plan.kv_cache)), "activations": sum(plan.activations)}


def check_host(
    plan: memplan.MemoryPlan,
    label: str,
    cores: int,
    positions: int | None,
    max_context: int,
    beside: tuple[str, int] | None = None,
    written: str | None = None,
) -> None:
    """A run that computes holds its cores' weights, KV cache and activations in this
    machine's memory (device/memory.py, `host_parts`): refuse one that would have the kernel
    kill the process part way through loading or generating. `beside`: (what, bytes) another
    model of the same run holds (a speculative run's draft); `written`: as `host_parts`."""
    parts = host_parts(plan, positions, max_context, written)
    if beside is not None:
        parts[beside[0]] = beside[1]
    need, have = sum(parts.values()), memory.host_memory_bytes()
    if need > memory.HOST_SHARE * have:
        shown = ", ".join(f"{kind} {fmt_bytes(n)}" for kind, n in parts.items() if n or kind == "weights")
        raise OutOfHostMemory(
            f"computing {label} on {cores} emulated core(s) needs about {fmt_bytes(need)} of this machine's memory "
            f"({shown}) and it has {fmt_bytes(have)}: a timing-only run (--timing-only) gives the times and the "
            "memory plan without the numbers, or use a narrower dtype, a shorter run or a smaller batch"
        )


def place(
    program: Program,
    device: Device,
    *,
    kv_format: str,
    max_context: int,
    batch: int,
    all_logits: bool,
    weight_sizes: dict[str, list[list[int]]],
    notes: list[str],
    views: bool,
    replacing: Session | None = None,
    prefill_batch: int | None = None,
    buckets: Buckets | None = None,
) -> Session:
    """Plan and place a session; `all_logits` keeps the LM head's output for every prefill
    position (for tests that compare them), which needs a larger logits buffer. The session
    it replaces is freed once the new one is planned (so a plan that does not fit leaves it
    in place), before the new one is placed. `prefill_batch`: the most sequences one
    prefill step holds (default `batch`)."""
    graph, tp = program.graph, program.tp
    buckets = buckets or Buckets.make(max_context)
    d = graph.head_dim
    recurrent = graph.meta.get("recurrent")
    if recurrent:  # RWKV: a fixed state per layer instead of a KV cache
        channels = program.sp.widths[recurrent]
        kv_layouts = [state_arrays(batch, graph.meta["hidden"], channels[c]) for c in range(tp)]
    else:
        kv_layouts = [kv_arrays(kv_format, batch, hi - lo, max_context, d) for lo, hi in program.sp.kv_heads]
    kind = "recurrent_state" if recurrent else "kv_cache"
    kv_sizes = [[int(np.prod(shape)) * dt.itemsize for shape, dt in layout.values()] for layout in kv_layouts]
    plan = memplan.plan_memory(
        program,
        device,
        batch=batch,
        prefill_tokens=buckets.prefill[-1],
        weight_sizes=weight_sizes,
        kv_sizes=kv_sizes,
        all_logits=all_logits,
        prefill_batch=prefill_batch,
        programs=buckets.programs,
        kv_kind=kind,
    )
    plan.notes[:0] = notes
    if views:
        check_host(plan, program.graph.label, device.num_cores, None, max_context)
    if replacing is not None:
        replacing.free(device)
    session = Session(
        plan, batch, all_logits, batch if prefill_batch is None else prefill_batch, [[] for _ in range(tp)],
        [{} for _ in range(tp)],
    )  # fmt: skip
    stages = program.stages
    activation_blocks = []
    for core in range(stages.cores):
        stage, lane = divmod(core, tp)
        memory = device.cores[core].memory
        first = sum(stages.layers[:stage])
        for layer in range(first, first + stages.layers[stage]):
            arrays = {}
            for name, (shape, dt) in kv_layouts[lane].items():
                nbytes = int(np.prod(shape)) * dt.itemsize
                block = memplan.place(plan, device, core, kind, nbytes, f"{kind}.{layer}.{name}")
                session.blocks.append((core, block))
                arrays[name] = memory.view(block, dt, shape) if views else None
            session.kv[lane].append(RecurrentState(**arrays) if recurrent else KVCache(kv_format, **arrays))
        block = memplan.place(plan, device, core, "activations", plan.layouts[core].total, "activations")
        session.blocks.append((core, block))
        activation_blocks.append(block)
        for name, nbytes in plan.reserved.items():  # the device runtime's own (CoreSpec.reserved)
            session.blocks.append((core, memplan.place(plan, device, core, name, nbytes, f"runtime.{name}")))
    program.assign(memplan.buffers(plan))
    if views:  # each lane sees the values of every stage, each in its own stage's core
        for core in range(stages.cores):
            block = activation_blocks[core]
            raw = device.cores[core].memory.view(block, np.uint8, (plan.layouts[core].total,))
            for name, buf in program.buffers[core].items():
                view = raw[buf.offset : buf.offset + buf.nbytes].view(buf.dtype).reshape(buf.shape)
                session.acts[core % tp][name] = view
    return session
