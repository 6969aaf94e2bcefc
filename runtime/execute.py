"""Functional execution of a Program: every core runs its numba kernels on its own memory,
and the collectives move the bytes between cores.

`Executor` binds each step of the Program, once, to the arrays it touches on every core
(weight slices, KV cache, planned activation views) through the op table (`ops.OPS`,
binders in `bind.py`), so a step is a loop over small closures. All-reduces run the
collective's schedule: its data moves are recorded once per size (collectives.execute.record)
and replayed, in the schedule's order, so each core ends with what arrived.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tilesim.collectives.execute import Recording, record
from tilesim.device.analytic import AnalyticFabric
from tilesim.device.kernels import activations
from tilesim.runtime.collective_plan import CollectivePlan
from tilesim.runtime.graph import Node
from tilesim.runtime.kvcache import KVCache
from tilesim.runtime.ops import OPS
from tilesim.runtime.program import Op, Program, Step, StepInputs
from tilesim.runtime.shard import ShardPlan

__all__ = ["Boundary", "Executor", "StepInputs"]

# steps that only move values already rounded (a 16-bit device stores them as they are);
# expert parallel's packed pairs also carry expert ids and routing weights, kept in fp32
COPIES = ("rope", "gather_logits", "moe_dispatch", "alltoall", "allgather", "send")


# collectives whose bytes cross between lanes: where a partial executor hands over its part
CROSSING = ("allreduce", "gather_logits", "alltoall", "allgather")


class Boundary:
    """A collective in a partial executor's ops: `op` (None for the logits gather, which the
    driver assembles) runs once every lane's input is in place (`value`, `rows(inputs)`)."""

    def __init__(self, step: Step, op: Op | None):
        self.step, self.op = step, op
        node = step.node
        self.value = node.inputs[0] if step.kind in ("alltoall", "allgather") else node.out

    def rows(self, sp: ShardPlan, inputs: StepInputs) -> int:
        """The rows of `value` each lane hands over in a step of `inputs`."""
        return sp.value_rows(self.value, Executor.rows(inputs, self.step.last))

    def __call__(self, inputs: StepInputs) -> None:
        raise RuntimeError("a partial executor's step runs segment by segment (runtime/distributed.py)")


class Executor:
    """Runs a Program on the cores' memory; `step(inputs)` returns the logits (rows, vocab)."""

    def __init__(
        self,
        program: Program,
        weights: list[dict[str, object]],  # per core (stage * tp + lane)
        kv: list[list[KVCache]],  # per lane, every layer
        acts: list[dict[str, np.ndarray]],  # per lane, every value (each on its stage's core)
        fabric: AnalyticFabric,
        collectives: CollectivePlan,
        rope_tables: tuple[np.ndarray, np.ndarray] | None,
        act_dtype: str = "fp32",  # fp32, fp16, bf16 (rounded after every op) or int8 (the products' inputs)
        *,
        null: bool = False,
        lanes: list[int] | None = None,
    ):
        """`null=True` binds nothing (timing-only, tinygrad's null device): a step runs no
        kernel and returns None. `lanes`: run only these lanes' kernels (the cores a Ray actor
        holds, runtime/distributed.py); each collective is then a `Boundary` in `ops`, where
        the actor hands its lanes' part to the others and takes theirs before it runs."""
        self.program, self.graph, self.sp = program, program.graph, program.sp
        self.weights, self.kv, self.acts = weights, kv, acts
        self.fabric = fabric
        self.collectives = collectives  # shared with the step timer: the schedules it timed
        self.rope_tables = rope_tables
        self.tp = program.tp
        self.lanes = list(range(self.tp)) if lanes is None else list(lanes)
        self.partial = lanes is not None  # hosted on an actor: stop at every collective
        self._recordings: dict[tuple[str, int], Recording] = {}
        self.act_dtype = act_dtype
        self.rounds16 = act_dtype in ("fp16", "bf16")  # every op's output rounded to 16 bits
        if self.rounds16 and program.fused:
            raise ValueError("16-bit activations round every op's output: lower the Program with fuse=False")
        self.product_act = "int8" if act_dtype == "int8" else "fp32"  # x as the products take it
        self.logits: np.ndarray | None = None
        self.routing: dict[int, np.ndarray] = {}  # layer -> tokens routed to each expert (mixtures of experts)
        self.exchanged: dict[int, list] = {}  # layer -> each core's dispatched pairs (expert parallel)
        self.step_routing: dict[int, np.ndarray] = {}  # layer -> rows routed to each expert in the last step
        self.ops: list[Op | Boundary] = []
        self.base = 0  # the first core of the stage whose step is being bound
        for step in [] if null else program.steps:
            self.base = step.stage * self.tp
            op = OPS[step.kind].bind(self, step)
            if op is None:
                continue
            if self.rounds16 and step.node.out and step.kind not in COPIES:
                op = self._rounded(op, step)
            if self.partial and step.kind in CROSSING:
                self.ops.append(Boundary(step, None if step.kind == "gather_logits" else op))
                continue
            self.ops.append(op)

    def step(self, inputs: StepInputs) -> np.ndarray:
        for op in self.ops:
            op(inputs)
        return self.logits

    # -- what the binders use -----------------------------------------------------------

    def views(self, name: str) -> list[np.ndarray]:
        """The value's array on each lane this executor runs."""
        return [self.acts[c][name] for c in self.lanes]

    def views_all(self, name: str) -> list[np.ndarray]:
        """The value's array on every lane (a collective's replay moves bytes among all)."""
        return [self.acts[c][name] for c in range(self.tp)]

    def params(self, node: Node, i: int) -> list[np.ndarray | None]:
        if len(node.params) <= i:
            return [None] * len(self.lanes)
        return [self.weights[self.base + c][node.params[i]] for c in self.lanes]

    def held(self, lane: int) -> dict[str, object]:
        """The weights of `lane`'s core on the stage of the step being bound."""
        return self.weights[self.base + lane]

    @staticmethod
    def rows(inputs: StepInputs, last: bool) -> int:
        """The rows a step of row class `last` (or `all`) runs on."""
        return inputs.batch if last and not inputs.all_logits else inputs.rows

    def _rounded(self, op: Op, step: Step) -> Op:
        """`op`, then its output rounded to the 16-bit activation type (as a 16-bit device stores it)."""
        views = self.views(step.node.out)
        to16 = activations.round_bf16 if self.act_dtype == "bf16" else activations.round_fp16
        last = step.last

        name = step.node.out

        def run(inputs: StepInputs) -> None:
            op(inputs)
            m = self.sp.value_rows(name, self.rows(inputs, last))
            for v in views:
                to16(v[:m])

        return run

    def recording(self, name: str, m: int, width: int, views: list[np.ndarray]) -> Recording:
        """The recorded all-reduce of value `name` over its first m rows, in place."""

        def flat() -> tuple[list[np.ndarray], list[np.ndarray]]:
            flats = [v[:m].reshape(-1) for v in views]
            return flats, flats

        return self.exchange("allreduce", name, m * width, flat)

    def exchange(
        self, op: str, name: str, n: int, views: Callable[[], tuple[list[np.ndarray], list[np.ndarray]]]
    ) -> Recording:
        """The recorded data moves of collective `op` of `n` elements per core of value `name`
        (the planned schedule, once per value and size); `views()` gives each core's flat input
        and output, asked for only when the moves are recorded."""
        key = (name, n)
        rec = self._recordings.get(key)
        if rec is None:
            schedule = self.collectives.get(op, n).schedule
            ins, outs = views()
            buffers = [
                {"in": i, "out": o, "tmp": np.zeros(schedule.tmp_len, np.float32)}
                for i, o in zip(ins, outs, strict=True)
            ]
            rec = self._recordings[key] = record(schedule, buffers, self.fabric, 4)
        return rec
