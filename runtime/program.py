"""The compiled Program: a sharded graph lowered once into the ordered steps that the
executor binds to arrays, the step timer times and the memory planner gives buffers.

Lowering decides, once, for every node of the sharded graph (`ShardPlan.nodes`, collectives
included):
- its row class: `all` (every token row of the step: batch x tokens) or `last` (one row per
  sequence: the nodes from `select_last` on, unless every position's logits are kept);
- whether it runs in place (writes an input, makes no new value: `ops.OPS[op].in_place`);
- its fused form: a residual add and the norm that reads its sum run as one kernel call
  (`add_norm`), and the linears that read the same input (a layer's q, k, v; its gate, up)
  as one launch (`linear_group`). Neither is fused with 16-bit activations, which round
  every op's output before the next op reads it.

Once a session is planned, each core's buffer of every value (shape, dtype, region, offset:
`Buffer`) is in `Program.buffers`, so a step's buffers are `Program.writes(step, core)`; the
session's arrays are views of exactly those bytes.

A fusion is the emulator's way of running the ops on the host (fewer calls); the device
model still times each op as its own kernel, as a device toolchain that does not fuse them
would run them, so `Program.nodes()` (every node, in order, with its index) is what the
timer and the memory plan walk and `Program.steps` what the executor binds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from tilesim.runtime.graph import DecoderGraph, Node
from tilesim.runtime.pipeline import Pipeline, Stages, single
from tilesim.runtime.shard import ShardPlan


@dataclass
class StepInputs:
    """The host's inputs to one step: `batch` sequences of `tokens` new tokens each."""

    ids: np.ndarray  # (batch * tokens,) int64, padding rows hold 0
    positions: np.ndarray  # (batch * tokens,) int64: absolute position of each row
    start: np.ndarray  # (batch,) int64: position of each sequence's first new token
    valid: np.ndarray  # (batch,) int64: how many of the `tokens` rows are real
    batch: int
    tokens: int
    all_logits: bool = False
    first_slot: int = 0  # the step's sequences are the KV cache's slots first_slot .. first_slot + batch - 1

    @property
    def rows(self) -> int:
        return self.batch * self.tokens

    @property
    def last_rows(self) -> np.ndarray:
        return np.arange(self.batch) * self.tokens + np.maximum(self.valid, 1) - 1


Op = Callable[[StepInputs], None]  # a bound step: runs its kernels on every core


@dataclass(frozen=True)
class Step:
    """One call of the executor: `kind` is an op of `ops.OPS`, or a fused form of several."""

    kind: str
    nodes: tuple[Node, ...]
    index: int  # position of the first node in the sharded graph (a trace's `node`)
    rows: str  # "all" | "last": the rows the step writes
    stage: int = 0  # the pipeline stage whose cores run it (runtime/pipeline.py)

    @property
    def node(self) -> Node:
        return self.nodes[0]

    @property
    def last(self) -> bool:
        """Whether the step writes one row per sequence (before `select_last` reads all rows)."""
        return self.rows == "last"


@dataclass(frozen=True)
class Buffer:
    """Where one value lives on one core for the session it was planned for: `shape` (rows,
    local width) in `dtype`, at byte `offset` of the core's activation block in `region`."""

    value: str
    shape: tuple[int, int]
    dtype: str
    region: str
    offset: int

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize


@dataclass
class Program:
    """A sharded graph for one device, as steps; see the module doc. `buffers[core]` maps
    every activation value the core holds to its `Buffer` once a session is planned
    (`assign`). Cores are numbered stage * tp + lane (`pipeline.Stages`)."""

    graph: DecoderGraph
    sp: ShardPlan
    steps: list[Step]
    fused: bool
    pipeline: Pipeline
    buffers: list[dict[str, Buffer]] = field(default_factory=list)

    def assign(self, buffers: list[dict[str, Buffer]]) -> None:
        """The memory plan's buffers of a session (runtime/memplan.py), one map per core."""
        if len(buffers) != self.cores:
            raise ValueError(f"buffers for {len(buffers)} cores, the program runs on {self.cores}")
        self.buffers = buffers

    def writes(self, step: Step, core: int) -> list[Buffer]:
        """The buffers `step` writes on `core`: each node's output, or for an op that runs in
        place (a bias, rope, an all-reduce) the input it overwrites."""
        from tilesim.runtime.ops import OPS  # the op table imports the binders, which import this module

        out = []
        for node in step.nodes:
            name = node.inputs[0] if OPS[node.op].in_place else node.out
            if name in self.buffers[core]:
                out.append(self.buffers[core][name])
        return out

    @property
    def tp(self) -> int:
        return self.sp.tp

    @property
    def stages(self) -> Stages:
        return self.pipeline.stages

    @property
    def cores(self) -> int:
        """Every core the program runs on: its stages times its tensor-parallel degree."""
        return self.pipeline.stages.cores

    def nodes(self) -> Iterator[tuple[int, Node, str]]:
        """(index, node, row class) of every node, in execution order."""
        for step in self.steps:
            for offset, node in enumerate(step.nodes):
                yield step.index + offset, node, step.rows

    def row_class(self) -> list[str]:
        """The row class of every node, by index."""
        return [rows for _, _, rows in self.nodes()]


def lower(graph: DecoderGraph, sp: ShardPlan, *, fuse: bool = True, pipeline: Pipeline | None = None) -> Program:
    """The Program of a sharded graph (`fuse=False`: one step per node), on the stages of
    `pipeline` (`pipeline.split`, run on `sp` before; default: one stage)."""
    pipeline = pipeline or single(sp, graph.layers)
    nodes = list(sp.nodes)
    stage = pipeline.node_stage
    select = next(i for i, node in enumerate(nodes) if node.op == "select_last")
    steps: list[Step] = []
    i = 0
    while i < len(nodes):
        rows = "last" if i >= select else "all"
        kind, count = _fusion(nodes, i) if fuse else (nodes[i].op, 1)
        if len(set(stage[i : i + count])) > 1:  # a fusion never spans two stages' cores
            kind, count = nodes[i].op, 1
        steps.append(Step(kind, tuple(nodes[i : i + count]), i, rows, stage[i]))
        i += count
    return Program(graph, sp, steps, fuse, pipeline)


def _fusion(nodes: list[Node], i: int) -> tuple[str, int]:
    """(kind, node count) of the step that starts at nodes[i]."""
    node = nodes[i]
    nxt = nodes[i + 1] if i + 1 < len(nodes) else None
    if node.op == "add" and nxt is not None and nxt.op == "norm" and nxt.inputs[0] == node.out:
        return "add_norm", 2
    if node.op == "linear":
        j = i + 1
        while j < len(nodes) and nodes[j].op == "linear" and nodes[j].inputs[0] == node.inputs[0]:
            j += 1
        if j - i > 1:
            return "linear_group", j - i
    return node.op, 1
