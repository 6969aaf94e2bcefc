"""The op table: for every op of a Program, in one row, how it binds to arrays (`bind.py`),
what it costs on the modelled device (`costs.py`), and what memory it needs.

- `bind(executor, step) -> Op | None`: the closure that runs the step on every core (None:
  nothing to run, e.g. an all-reduce on one core). Fused forms (`add_norm`,
  `linear_group`) have a binder only: the device times their nodes one by one.
- `cost(timer, node, core, rows, shape) -> KernelCost`: one core's kernel for one step
  shape; None for collectives, which the fabric times (`collective=True`).
- `in_place`: the op writes into its input and makes no new value (no buffer of its own).

Adding an op: its kernel with a float64 reference and a cost function (device/kernels/),
a binder and a cost here, and one row in OPS (docs/adding-a-model.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tilesim.runtime import bind, costs


@dataclass(frozen=True)
class OpEntry:
    bind: Callable
    cost: Callable | None = None
    in_place: bool = False
    collective: bool = False


OPS: dict[str, OpEntry] = {
    "embed": OpEntry(bind.bind_embed, costs.embed),
    "add_positions": OpEntry(bind.bind_add_positions, costs.add),
    "norm": OpEntry(bind.bind_norm, costs.norm),
    "linear": OpEntry(bind.bind_linear, costs.linear),
    "lm_head": OpEntry(bind.bind_linear, costs.linear),
    "bias": OpEntry(bind.bind_bias, costs.add, in_place=True),
    "allreduce": OpEntry(bind.bind_allreduce, in_place=True, collective=True),
    "gather_logits": OpEntry(bind.bind_gather_logits, collective=True),
    "head_norm": OpEntry(bind.bind_head_norm, costs.head_norm),
    "rope": OpEntry(bind.bind_rope, costs.rope, in_place=True),
    "attention": OpEntry(bind.bind_attention, costs.attention),
    "act": OpEntry(bind.bind_act, costs.act),
    "swiglu": OpEntry(bind.bind_swiglu, costs.swiglu),
    "add": OpEntry(bind.bind_add, costs.add),
    "select_last": OpEntry(bind.bind_select_last, costs.select_last),
    "moe": OpEntry(bind.bind_moe, costs.moe),
    "moe_dispatch": OpEntry(bind.bind_moe_dispatch, costs.moe_dispatch),
    "alltoall": OpEntry(bind.bind_exchange, collective=True),
    "moe_experts": OpEntry(bind.bind_moe_experts, costs.moe_experts),
    "moe_combine": OpEntry(bind.bind_moe_combine, costs.moe_combine),
    "allgather": OpEntry(bind.bind_exchange, collective=True),
    "shift": OpEntry(bind.bind_shift, costs.shift),
    "mix": OpEntry(bind.bind_mix, costs.mix),
    "wkv": OpEntry(bind.bind_wkv, costs.wkv),
    "mul": OpEntry(bind.bind_mul, costs.mul),
    "scale": OpEntry(bind.bind_scale, costs.scale, in_place=True),
    "send": OpEntry(bind.bind_send, collective=True),  # pipeline: one stage's cores to the next's
    # fused forms (runtime/program.py decides them)
    "add_norm": OpEntry(bind.bind_add_norm),
    "linear_group": OpEntry(bind.bind_linear),
}

IN_PLACE_OPS = tuple(op for op, entry in OPS.items() if entry.in_place)
