"""Functional execution of a sharded graph: every core runs its numba kernels on its own
memory, and the collectives move the bytes between cores.

`Executor` binds each node of the sharded graph, once, to the arrays it touches on every
core (weight slices, KV cache, planned activation views), so a step is a loop over small
closures. A step's rows are `batch x tokens`; nodes after `select_last` see one row per
sequence (all rows when every position's logits are asked for). All-reduces run the
collective's schedule: its data moves are recorded once per size (collectives.execute.record)
and replayed, in the schedule's order, so each core ends with what arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tilesim.collectives import build_schedule
from tilesim.collectives.execute import Recording, record
from tilesim.device.analytic import AnalyticFabric
from tilesim.device.kernels import activations, elementwise, norms, quant, rotary
from tilesim.runtime.graph import DecoderGraph, Node
from tilesim.runtime.kvcache import KVCache
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

    @property
    def rows(self) -> int:
        return self.batch * self.tokens

    @property
    def last_rows(self) -> np.ndarray:
        return np.arange(self.batch) * self.tokens + np.maximum(self.valid, 1) - 1


Op = Callable[[StepInputs], None]


class Executor:
    """Runs a sharded graph on the cores' memory; `step(inputs)` returns the logits (rows, vocab)."""

    def __init__(
        self,
        graph: DecoderGraph,
        sp: ShardPlan,
        weights: list[dict[str, object]],
        kv: list[list[KVCache]],
        acts: list[dict[str, np.ndarray]],
        fabric: AnalyticFabric,
        algorithms: Callable[[str, int], str],
        rope_tables: tuple[np.ndarray, np.ndarray] | None,
        act_dtype: str = "fp32",  # fp32, fp16, bf16 (rounded after every op) or int8 (the products' inputs)
    ):
        self.graph, self.sp = graph, sp
        self.weights, self.kv, self.acts = weights, kv, acts
        self.fabric = fabric
        self.algorithms = algorithms  # (op, elements) -> algorithm name
        self.rope_tables = rope_tables
        self.tp = sp.tp
        self._recordings: dict[tuple[str, int], Recording] = {}
        self.act_dtype = act_dtype
        self.rounds16 = act_dtype in ("fp16", "bf16")  # every op's output rounded to 16 bits
        self.product_act = "int8" if act_dtype == "int8" else "fp32"  # x as the products take it
        self.ops: list[Op] = []
        after = False
        nodes = list(sp.nodes)
        i = 0
        while i < len(nodes):
            node = nodes[i]
            after = after or node.op == "select_last"
            if node.op == "allreduce" and self.tp == 1:  # one core holds the whole sum already
                i += 1
                continue
            if self._add_then_norm(nodes, i):
                self.ops.append(self._bind_add_norm(node, nodes[i + 1], after))
                i += 2
                continue
            group = self._same_input_linears(nodes, i)
            if len(group) > 1:
                self.ops.append(self._bind_linear_group(group, after))
                i += len(group)
                continue
            op = getattr(self, f"_bind_{node.op}")(node, after and node.op != "select_last")
            if self.rounds16 and node.out and node.op not in ("rope", "gather_logits"):
                op = self._rounded(op, node, after and node.op != "select_last")
            self.ops.append(op)
            i += 1

    def step(self, inputs: StepInputs) -> np.ndarray:
        for op in self.ops:
            op(inputs)
        return self._logits

    # -- helpers ------------------------------------------------------------------------

    def _views(self, name: str) -> list[np.ndarray]:
        return [self.acts[c][name] for c in range(self.tp)]

    def _params(self, node: Node, i: int) -> list[np.ndarray | None]:
        if len(node.params) <= i:
            return [None] * self.tp
        return [self.weights[c][node.params[i]] for c in range(self.tp)]

    @staticmethod
    def _rows(inputs: StepInputs, after_select: bool) -> int:
        return inputs.batch if after_select and not inputs.all_logits else inputs.rows

    def _rounded(self, op: Op, node: Node, after: bool) -> Op:
        """`op`, then its output rounded to the 16-bit activation type (as a 16-bit device stores it)."""
        views = self._views(node.out)
        to16 = activations.round_bf16 if self.act_dtype == "bf16" else activations.round_fp16

        def run(inputs: StepInputs) -> None:
            op(inputs)
            m = self._rows(inputs, after)
            for v in views:
                to16(v[:m])

        return run

    # -- one binder per op --------------------------------------------------------------

    def _bind_embed(self, node: Node, after: bool) -> Op:
        outs, tables = self._views(node.out), self._params(node, 0)
        starts = [self.sp.rows[node.params[0]][c][0] for c in range(self.tp)]

        def run(inputs: StepInputs) -> None:
            m = inputs.rows
            for out, table, start in zip(outs, tables, starts, strict=True):
                if table.fmt == "fp32":
                    elementwise.embed(inputs.ids, table.arrays["w"], start, out[:m])
                    continue
                local = inputs.ids - start
                inside = (local >= 0) & (local < table.shape[0])
                out[:m] = 0.0
                if inside.any():
                    out[:m][inside] = quant.unpack(table, local[inside])

        return run

    def _add_then_norm(self, nodes: list[Node], i: int) -> bool:
        """A residual add whose sum the next node normalises: one kernel call for both
        (not with 16-bit activations, which round the sum before the norm reads it)."""
        nxt = nodes[i + 1] if i + 1 < len(nodes) else None
        return (
            nodes[i].op == "add"
            and nxt is not None
            and nxt.op == "norm"
            and nxt.inputs[0] == nodes[i].out
            and not self.rounds16
        )

    def _bind_add_norm(self, add: Node, norm: Node, after: bool) -> Op:
        a_s, b_s, sums = self._views(add.inputs[0]), self._views(add.inputs[1]), self._views(add.out)
        outs, ws = self._views(norm.out), self._params(norm, 0)
        bs = self._params(norm, 1) if norm.attrs["kind"] == "layer_norm" else [None] * self.tp
        eps = norm.attrs["eps"]
        cores = list(zip(a_s, b_s, sums, ws, bs, outs, strict=True))

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, after)
            for a, b, s, w, bias, out in cores:
                norms.add_norm(a[:m], b[:m], s[:m], w, bias, eps, out[:m])

        return run

    def _bind_add_positions(self, node: Node, after: bool) -> Op:
        xs, outs = self._views(node.inputs[0]), self._views(node.out)
        tables = [packed.arrays["w"] for packed in self._params(node, 0)]  # learned positions stay fp32
        offset = node.attrs["offset"]

        def run(inputs: StepInputs) -> None:
            m = inputs.rows
            rows = inputs.positions + offset
            for x, out, table in zip(xs, outs, tables, strict=True):
                np.add(x[:m], table[rows], out=out[:m])

        return run

    def _bind_norm(self, node: Node, after: bool) -> Op:
        xs, outs = self._views(node.inputs[0]), self._views(node.out)
        ws, bs = self._params(node, 0), self._params(node, 1)
        eps, layer = node.attrs["eps"], node.attrs["kind"] == "layer_norm"

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, after)
            for x, out, w, b in zip(xs, outs, ws, bs, strict=True):
                if layer:
                    norms.layer_norm(x[:m], w, b, eps, out[:m])
                else:
                    norms.rms_norm(x[:m], w, eps, out[:m])

        return run

    def _bind_linear(self, node: Node, after: bool) -> Op:
        return self._bind_linear_group([node], after)

    _bind_lm_head = _bind_linear

    def _same_input_linears(self, nodes: list[Node], i: int) -> list[Node]:
        """nodes[i] and the linears right after it that read the same input (q, k, v; gate, up)."""
        if nodes[i].op != "linear" or self.rounds16:
            return nodes[i : i + 1]
        j = i + 1
        while j < len(nodes) and nodes[j].op == "linear" and nodes[j].inputs[0] == nodes[i].inputs[0]:
            j += 1
        return nodes[i:j]

    def _bind_linear_group(self, group: list[Node], after: bool) -> Op:
        """The group's products, core by core; one kernel launch per core for block formats."""
        xs = self._views(group[0].inputs[0])
        outs = list(zip(*(self._views(n.out) for n in group), strict=True))
        ws = list(zip(*(self._params(n, 0) for n in group), strict=True))
        bs = list(zip(*(self._params(n, 1) for n in group), strict=True))
        views = list(xs) + [o for out in outs for o in out]
        act = self.product_act
        if not all(v.flags.c_contiguous for v in views):  # the kernels' fast path needs C order

            def checked(inputs: StepInputs) -> None:
                m = self._rows(inputs, after)
                for c in range(self.tp):
                    quant.linear_group(xs[c][:m], list(ws[c]), list(bs[c]), [o[:m] for o in outs[c]], act)

            return checked
        calls = [quant.bind(list(ws[c]), list(bs[c]), act) for c in range(self.tp)]
        single = len(group) == 1

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, after)
            for x, call, out in zip(xs, calls, outs, strict=True):
                call(x[:m], (out[0][:m],) if single else tuple(o[:m] for o in out))

        return run

    def _bind_bias(self, node: Node, after: bool) -> Op:
        xs, bs = self._views(node.out), self._params(node, 0)

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, after)
            for x, b in zip(xs, bs, strict=True):
                elementwise.add_bias(x[:m], b)

        return run

    def _bind_allreduce(self, node: Node, after: bool) -> Op:
        views = self._views(node.out)
        width = views[0].shape[1]

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, after)
            self._recording(node.out, m, width, views).replay(np.add)

        return run

    def _recording(self, name: str, m: int, width: int, views: list[np.ndarray]) -> Recording:
        key = (name, m)
        rec = self._recordings.get(key)
        if rec is None:
            n = m * width
            schedule = build_schedule("allreduce", self.algorithms("allreduce", n), self.tp, n)
            buffers = []
            for v in views:
                flat = v[:m].reshape(-1)
                buffers.append({"in": flat, "out": flat, "tmp": np.zeros(schedule.tmp_len, np.float32)})
            rec = self._recordings[key] = record(schedule, buffers, self.fabric, 4)
        return rec

    def _bind_rope(self, node: Node, after: bool) -> Op:
        qs, ks = self._views(node.inputs[0]), self._views(node.inputs[1])
        d = self.graph.head_dim
        rot, style = node.attrs["rot"], node.attrs["style"]
        cos, sin = self.rope_tables

        def run(inputs: StepInputs) -> None:
            m = inputs.rows
            for q, k in zip(qs, ks, strict=True):
                rotary.rope(q[:m].reshape(m, -1, d), inputs.positions, cos, sin, rot, style)
                rotary.rope(k[:m].reshape(m, -1, d), inputs.positions, cos, sin, rot, style)

        return run

    def _bind_attention(self, node: Node, after: bool) -> Op:
        qs, ks, vs = (self._views(name) for name in node.inputs)
        outs = self._views(node.out)
        layer = node.layer
        caches = [self.kv[c][layer] for c in range(self.tp)]
        d, scale, window = self.graph.head_dim, node.attrs["scale"], node.attrs["window"]

        def run(inputs: StepInputs) -> None:
            b, t, m = inputs.batch, inputs.tokens, inputs.rows
            for q, k, v, out, cache in zip(qs, ks, vs, outs, caches, strict=True):
                cache.write(k[:m].reshape(b, t, -1, d), v[:m].reshape(b, t, -1, d), inputs.start, inputs.valid)
                q4, out4 = q[:m].reshape(b, t, -1, d), out[:m].reshape(b, t, -1, d)
                cache.attend(q4, inputs.start, inputs.valid, scale, out4, window)

        return run

    def _bind_act(self, node: Node, after: bool) -> Op:
        xs, outs = self._views(node.inputs[0]), self._views(node.out)
        fn = activations.ACTIVATIONS[node.attrs["kind"]]

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, after)
            for x, out in zip(xs, outs, strict=True):
                fn(x[:m], out[:m])

        return run

    def _bind_swiglu(self, node: Node, after: bool) -> Op:
        gates, ups, outs = self._views(node.inputs[0]), self._views(node.inputs[1]), self._views(node.out)

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, after)
            for g, u, out in zip(gates, ups, outs, strict=True):
                activations.silu_mul(g[:m], u[:m], out[:m])

        return run

    def _bind_add(self, node: Node, after: bool) -> Op:
        a_s, b_s, outs = self._views(node.inputs[0]), self._views(node.inputs[1]), self._views(node.out)

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, after)
            for a, b, out in zip(a_s, b_s, outs, strict=True):
                elementwise.add(a[:m], b[:m], out[:m])

        return run

    def _bind_select_last(self, node: Node, after: bool) -> Op:
        xs, outs = self._views(node.inputs[0]), self._views(node.out)

        def run(inputs: StepInputs) -> None:
            if inputs.all_logits:
                m = inputs.rows
                for x, out in zip(xs, outs, strict=True):
                    out[:m] = x[:m]
                return
            rows = inputs.last_rows
            for x, out in zip(xs, outs, strict=True):
                np.take(x, rows, axis=0, out=out[: inputs.batch])

        return run

    def _bind_gather_logits(self, node: Node, after: bool) -> Op:
        views = self._views(node.out)

        def run(inputs: StepInputs) -> None:
            m = self._rows(inputs, True)
            self._logits = np.concatenate([v[:m] for v in views], axis=1) if self.tp > 1 else views[0][:m].copy()

        return run
