"""Pipeline (layer) sharding as a pass after tensor parallelism, as PopTransformer's
"sharding" mode places a model: consecutive layers on consecutive stages, each stage `tp`
cores wide (`--pp N`, or `--layers-per-stage 4,6,6,...` as its `layer_per_ipu`).

Stage s holds the layers `Stages.layers` gives it and runs on cores s*tp .. s*tp + tp - 1 (a
core's place in its stage is its lane). The nodes before the first layer (the embedding) run
on the first stage, those after the last (final norm, LM head) on the last. A weight used
by nodes on several stages (an embedding tied to the LM head) is held on each of them.

Where a value made on one stage is read on a later one (the residual stream, between two
layers), the pass inserts a `send` node: each lane's slice goes from its core on the stage
that made it to the same lane's core on the next stage, over the fabric's link, and the
readers read the copy. A value read two stages on is forwarded through the stage between.

At batch 1 the stages run in turn. With `micro_batches` M, the step's batch is cut into M
micro-batches that flow through the stages one after another (GPipe's schedule, as
PopTransformer's pipelined configuration runs them); the step timer places them and the
report shows the bubble. The executor runs the whole batch at once: every kernel computes
each row on its own, so the numbers are those of the micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from tilesim.errors import ConfigError, ShardingError
from tilesim.runtime.graph import Node
from tilesim.runtime.shard import ShardPlan


@dataclass(frozen=True)
class Stages:
    """`layers[s]` layers on stage s, each stage `tp` cores; `micro_batches` per step."""

    tp: int
    layers: tuple[int, ...]
    micro_batches: int = 1

    @property
    def pp(self) -> int:
        return len(self.layers)

    @property
    def cores(self) -> int:
        return self.pp * self.tp

    def of_layer(self, layer: int) -> int:
        end = 0
        for stage, count in enumerate(self.layers):
            end += count
            if layer < end:
                return stage
        return self.pp - 1

    def core(self, stage: int, lane: int) -> int:
        return stage * self.tp + lane

    def describe(self) -> dict:
        return {"pp": self.pp, "layers_per_stage": list(self.layers), "micro_batches": self.micro_batches}


def make_stages(
    layers: int,
    tp: int,
    pp: int | None = None,
    layers_per_stage: list[int] | tuple[int, ...] | str | None = None,
    micro_batches: int = 1,
) -> Stages:
    """The stages of a model of `layers` layers: `pp` equal stages, or the listed counts."""
    if isinstance(layers_per_stage, str):
        try:
            layers_per_stage = [int(x) for x in layers_per_stage.split(",") if x.strip()]
        except ValueError:
            raise ShardingError(
                f"layers_per_stage={layers_per_stage!r}: give whole numbers separated by commas, e.g. 4,6,6"
            ) from None
    if not isinstance(micro_batches, int) or isinstance(micro_batches, bool) or micro_batches < 1:
        raise ConfigError(f"micro_batches={micro_batches!r} must be a whole number of at least 1")
    if layers_per_stage is not None:
        counts = tuple(layers_per_stage) if isinstance(layers_per_stage, list | tuple) else (layers_per_stage,)
        if not counts or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in counts):
            raise ShardingError(
                f"layers_per_stage={list(counts)}: every stage needs a whole number of layers, at least one layer"
            )
        if pp is not None and pp != len(counts):
            raise ShardingError(
                f"pp={pp} but layers_per_stage={','.join(map(str, counts))} lists {len(counts)} "
                f"stage{'s' if len(counts) > 1 else ''}; give one of them"
            )
        if sum(counts) != layers:
            raise ShardingError(
                f"layers_per_stage={','.join(map(str, counts))} places {sum(counts)} "
                f"layer{'s' if sum(counts) != 1 else ''}; the model has {layers}"
            )
        return Stages(tp, counts, micro_batches)
    pp = 1 if pp is None else pp
    if not isinstance(pp, int) or isinstance(pp, bool) or pp < 1:
        raise ShardingError(f"pp={pp!r}: the pipeline degree must be a whole number of at least 1")
    if pp > layers:
        raise ShardingError(f"pp={pp} stages for {layers} layers: each stage needs at least one layer")
    if layers % pp:
        ok = ", ".join(str(d) for d in range(1, layers + 1) if layers % d == 0)
        raise ShardingError(
            f"{layers} layers do not split evenly over pp={pp} stages; use a `pp` of {ok}, or list the layers of "
            f"each stage (`layers_per_stage`, e.g. {_uneven(layers, pp)})"
        )
    return Stages(tp, (layers // pp,) * pp, micro_batches)


def stage_count(pp: int | None, layers_per_stage) -> int:
    """How many stages `pp` or a `layers_per_stage` list asks for (before they are checked)."""
    if layers_per_stage is None:
        return pp or 1
    if isinstance(layers_per_stage, str):
        return len([x for x in layers_per_stage.split(",") if x.strip()]) or 1
    try:
        return len(layers_per_stage) or 1
    except TypeError:
        raise ShardingError(
            f"layers_per_stage={layers_per_stage!r} must list each stage's layers, e.g. [4, 6, 6]"
        ) from None


def _uneven(layers: int, pp: int) -> str:
    base, extra = divmod(layers, pp)
    return ",".join(str(base + (s >= pp - extra)) for s in range(pp))


@dataclass
class Pipeline:
    """What the pass decided: the stage of every node (by index in `ShardPlan.nodes`), of
    every activation value, and the stages that hold each weight."""

    stages: Stages
    node_stage: list[int]
    value_stage: dict[str, int]
    param_stages: dict[str, tuple[int, ...]]

    def shared_params(self) -> list[str]:
        return [p for p, stages in self.param_stages.items() if len(stages) > 1]


def split(sp: ShardPlan, stages: Stages) -> Pipeline:
    """Assign `sp.nodes` to stages and insert the sends between them (replaces `sp.nodes`)."""
    if stages.tp != sp.tp:
        raise ValueError(f"stages of {stages.tp} lanes for a plan of {sp.tp} cores")
    nodes = list(sp.nodes)
    seen_layer = False
    stage_of: list[int] = []
    for node in nodes:
        if node.layer is not None:
            seen_layer = True
            stage_of.append(stages.of_layer(node.layer))
        else:
            stage_of.append(stages.pp - 1 if seen_layer else 0)
    made: dict[str, int] = {}  # original value -> stage that makes it
    readers: dict[str, int] = {}  # original value -> last stage that reads it
    for node, stage in zip(nodes, stage_of, strict=True):
        for name in node.inputs:
            if name in made:
                readers[name] = max(readers.get(name, stage), stage)
        if node.out and node.out not in made:
            made[node.out] = stage
    current: dict[str, str] = {}  # original value -> its copy on the stage running now
    out: list[Node] = []
    out_stage: list[int] = []
    value_stage = {}
    stage = 0
    for node, s in zip(nodes, stage_of, strict=True):
        while stage < s:  # crossing one boundary at a time: forward what later stages read
            stage += 1
            crossing = [v for v, m in made.items() if m < stage and readers.get(v, -1) >= stage and v in value_stage]
            for v in crossing:
                name = f"{v}@{stage}"  # `v` is the graph's own name: copies are named afresh
                sp.widths[name] = sp.widths[v]
                if v in sp.row_rules:
                    sp.row_rules[name] = sp.row_rules[v]
                src = current.get(v, v)
                out.append(Node("send", name, (src,), (), {"src": stage - 1, "dst": stage}, None, "pipeline"))
                out_stage.append(stage)
                current[v] = name
                value_stage[name] = stage
        renamed = tuple(current.get(name, name) for name in node.inputs)
        new_out = current.get(node.out, node.out) if node.out else node.out
        if renamed != node.inputs or new_out != node.out:
            node = Node(node.op, new_out, renamed, node.params, node.attrs, node.layer, node.op_type)
        out.append(node)
        out_stage.append(s)
        if node.out and node.out not in value_stage:
            value_stage[node.out] = s
    param_stages: dict[str, set[int]] = {}
    for node, s in zip(out, out_stage, strict=True):
        for p in node.params:
            param_stages.setdefault(p, set()).add(s)
    sp.nodes = out
    return Pipeline(stages, out_stage, value_stage, {p: tuple(sorted(s)) for p, s in param_stages.items()})


def single(sp: ShardPlan, layers: int) -> Pipeline:
    """The pipeline of one stage: every node on cores 0 .. tp - 1, no sends."""
    return split(sp, Stages(sp.tp, (max(layers, 1),)))
