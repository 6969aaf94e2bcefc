"""How each op of a Program binds, once, to the arrays it touches on every core: a closure
that runs the op's kernels for one step (`ops.OPS` names each op's binder).

A binder gets the executor (the cores' weights, KV caches, planned activation views and
helpers) and the Program step; the closure gets the step's `StepInputs`. Rows: a step of
row class `last` sees one row per sequence (all rows when every position's logits are kept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from tilesim.device.kernels import activations, attention, cores, elementwise, moe, norms, quant, recurrent, rotary
from tilesim.runtime.program import Op, Step, StepInputs

if TYPE_CHECKING:
    from tilesim.runtime.execute import Executor


def _every_core(ex: Executor, after: bool, every: Callable[[int], None]) -> Op:
    """A step's op as one call for every core (device/kernels/cores.py) over the step's rows."""

    def run(inputs: StepInputs) -> None:
        every(ex.rows(inputs, after))

    return run


def bind_embed(ex: Executor, step: Step) -> Op:
    node = step.node
    outs, tables = ex.views(node.out), ex.params(node, 0)
    starts = [ex.sp.rows[node.params[0]][c][0] for c in ex.lanes]
    if all(t.fmt == "fp32" for t in tables):
        every = cores.bind_embed([t.arrays["w"] for t in tables], starts, outs)
        if every is not None:
            return lambda inputs: every(inputs.ids)

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


def bind_add_norm(ex: Executor, step: Step) -> Op:
    (add, norm), after = step.nodes, step.last
    a_s, b_s, sums = ex.views(add.inputs[0]), ex.views(add.inputs[1]), ex.views(add.out)
    outs, ws = ex.views(norm.out), ex.params(norm, 0)
    bs = ex.params(norm, 1) if norm.attrs["kind"] == "layer_norm" else [None] * len(ex.lanes)
    eps = norm.attrs["eps"]
    every = cores.bind_add_norm(a_s, b_s, sums, ws, bs, outs, eps)
    if every is not None:
        return _every_core(ex, after, every)
    lanes = list(zip(a_s, b_s, sums, ws, bs, outs, strict=True))

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, after)
        for a, b, s, w, bias, out in lanes:
            norms.add_norm(a[:m], b[:m], s[:m], w, bias, eps, out[:m])

    return run


def bind_add_positions(ex: Executor, step: Step) -> Op:
    node = step.node
    xs, outs = ex.views(node.inputs[0]), ex.views(node.out)
    tables = [packed.arrays["w"] for packed in ex.params(node, 0)]  # learned positions stay fp32
    offset = node.attrs["offset"]

    def run(inputs: StepInputs) -> None:
        m = inputs.rows
        rows = inputs.positions + offset
        for x, out, table in zip(xs, outs, tables, strict=True):
            np.add(x[:m], table[rows], out=out[:m])

    return run


def bind_norm(ex: Executor, step: Step) -> Op:
    node, after = step.node, step.last
    xs, outs = ex.views(node.inputs[0]), ex.views(node.out)
    ws, bs = ex.params(node, 0), ex.params(node, 1)
    eps, layer = node.attrs["eps"], node.attrs["kind"] == "layer_norm"
    every = cores.bind_norm(xs, ws, bs if layer else [None] * len(xs), outs, eps)
    if every is not None:
        return _every_core(ex, after, every)

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, after)
        for x, out, w, b in zip(xs, outs, ws, bs, strict=True):
            if layer:
                norms.layer_norm(x[:m], w, b, eps, out[:m])
            else:
                norms.rms_norm(x[:m], w, eps, out[:m])

    return run


def bind_head_norm(ex: Executor, step: Step) -> Op:
    node, after = step.node, step.last
    xs, outs, ws = ex.views(node.inputs[0]), ex.views(node.out), ex.params(node, 0)
    eps = node.attrs["eps"]
    every = cores.bind_head_norm(xs, ws, outs, eps)
    if every is not None:
        return _every_core(ex, after, every)

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, after)
        for x, out, w in zip(xs, outs, ws, strict=True):
            norms.head_rms_norm(x[:m], w, eps, out[:m])

    return run


def bind_linear(ex: Executor, step: Step) -> Op:
    """The group's products on every core: one call for all cores where `cores.bind_linear`
    runs the format, else one kernel launch per core."""
    group, after = step.nodes, step.last
    xs = ex.views(group[0].inputs[0])
    outs = list(zip(*(ex.views(n.out) for n in group), strict=True))
    ws = list(zip(*(ex.params(n, 0) for n in group), strict=True))
    bs = list(zip(*(ex.params(n, 1) for n in group), strict=True))
    views = list(xs) + [o for out in outs for o in out]
    act = ex.product_act
    if not all(v.flags.c_contiguous for v in views):  # the kernels' fast path needs C order

        def checked(inputs: StepInputs) -> None:
            m = ex.rows(inputs, after)
            for c in range(len(ex.lanes)):
                quant.linear_group(xs[c][:m], list(ws[c]), list(bs[c]), [o[:m] for o in outs[c]], act)

        return checked
    every = cores.bind_linear(xs, ws, bs, outs) if act == "fp32" else None
    if every is not None:  # one call for all cores' products
        return _every_core(ex, after, every)
    calls = [quant.bind(list(ws[c]), list(bs[c]), act) for c in range(len(ex.lanes))]
    single = len(group) == 1

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, after)
        for x, call, out in zip(xs, calls, outs, strict=True):
            call(x[:m], (out[0][:m],) if single else tuple(o[:m] for o in out))

    return run


def bind_bias(ex: Executor, step: Step) -> Op:
    node, after = step.node, step.last
    xs, bs = ex.views(node.out), ex.params(node, 0)

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, after)
        for x, b in zip(xs, bs, strict=True):
            elementwise.add_bias(x[:m], b)

    return run


def bind_allreduce(ex: Executor, step: Step) -> Op | None:
    node, after = step.node, step.last
    if ex.tp == 1:  # one core holds the whole sum already
        return None
    views = ex.views_all(node.out)  # the replay moves bytes among every lane's buffer
    width = views[0].shape[1]

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, after)
        ex.recording(node.out, m, width, views).replay(np.add)

    return run


def bind_rope(ex: Executor, step: Step) -> Op:
    node = step.node
    qs, ks = ex.views(node.inputs[0]), ex.views(node.inputs[1])
    d = ex.graph.head_dim
    rot, style = node.attrs["rot"], node.attrs["style"]
    cos, sin = ex.rope_tables
    every = cores.bind_rope(qs, ks, d, cos, sin, rot, style)
    if every is not None:

        def all_cores(inputs: StepInputs) -> None:
            every(inputs.rows, inputs.positions)

        return all_cores

    def run(inputs: StepInputs) -> None:
        m = inputs.rows
        for q, k in zip(qs, ks, strict=True):
            rotary.rope(q[:m].reshape(m, -1, d), inputs.positions, cos, sin, rot, style)
            rotary.rope(k[:m].reshape(m, -1, d), inputs.positions, cos, sin, rot, style)

    return run


def bind_attention(ex: Executor, step: Step) -> Op:
    node = step.node
    qs, ks, vs = (ex.views(name) for name in node.inputs)
    outs = ex.views(node.out)
    d, scale, window = ex.graph.head_dim, node.attrs["scale"], node.attrs["window"]
    slopes = [_core_slopes(ex, node, c) for c in ex.lanes]
    caches = [ex.kv[c][node.layer] for c in ex.lanes]
    every = None
    if all(cache.fmt == "fp32" for cache in caches):  # one call for all cores, from the session's first slot
        zero = [attention.no_slopes(q.shape[1] // d) if s is None else s for q, s in zip(qs, slopes, strict=True)]
        every = cores.bind_attention(
            qs, ks, vs, [c.k for c in caches], [c.v for c in caches], outs, zero, d, scale, window
        )  # fmt: skip

    def run(inputs: StepInputs) -> None:
        b, t, m = inputs.batch, inputs.tokens, inputs.rows
        if every is not None and inputs.first_slot == 0:
            every(b, t, inputs.start, inputs.valid)
            return
        for q, k, v, out, cache, slope in zip(qs, ks, vs, outs, _states(ex, node, inputs), slopes, strict=True):
            cache.write(k[:m].reshape(b, t, -1, d), v[:m].reshape(b, t, -1, d), inputs.start, inputs.valid)
            q4, out4 = q[:m].reshape(b, t, -1, d), out[:m].reshape(b, t, -1, d)
            cache.attend(q4, inputs.start, inputs.valid, scale, out4, window, slope)

    return run


def _core_slopes(ex: Executor, node, core: int) -> np.ndarray | None:
    """One core's ALiBi slopes: those of its real query heads, first, zero for padded heads."""
    alibi = node.attrs.get("alibi")
    if alibi is None:
        return None
    local = np.zeros(ex.sp.widths[node.inputs[0]][core] // ex.graph.head_dim, np.float32)
    lo, hi = ex.sp.q_heads[core]
    real = alibi[lo : max(lo, min(hi, len(alibi)))]
    local[: len(real)] = real
    return local


def bind_act(ex: Executor, step: Step) -> Op:
    node, after = step.node, step.last
    xs, outs = ex.views(node.inputs[0]), ex.views(node.out)
    fn = activations.ACTIVATIONS[node.attrs["kind"]]

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, after)
        for x, out in zip(xs, outs, strict=True):
            fn(x[:m], out[:m])

    return run


def _two_inputs(kernel, every_core=None) -> Callable[[Executor, Step], Op]:
    """The binder of an element-wise op of two inputs: `kernel(a, b, out)` on every core, or
    one call of `every_core(a_s, b_s, outs)(m)` for all cores where it binds."""

    def bind(ex: Executor, step: Step) -> Op:
        node, after = step.node, step.last
        a_s, b_s, outs = ex.views(node.inputs[0]), ex.views(node.inputs[1]), ex.views(node.out)
        every = every_core(a_s, b_s, outs) if every_core else None
        if every is not None:
            return _every_core(ex, after, every)

        def run(inputs: StepInputs) -> None:
            m = ex.rows(inputs, after)
            for a, b, out in zip(a_s, b_s, outs, strict=True):
                kernel(a[:m], b[:m], out[:m])

        return run

    return bind


bind_swiglu = _two_inputs(activations.silu_mul, cores.bind_silu_mul)  # silu(gate) * up
bind_mul = _two_inputs(lambda a, b, out: np.multiply(a, b, out=out))  # RWKV: receptance * value
bind_add = _two_inputs(elementwise.add)


def bind_select_last(ex: Executor, step: Step) -> Op:
    node = step.node
    xs, outs = ex.views(node.inputs[0]), ex.views(node.out)
    every = cores.bind_take_rows(xs, outs)
    if every is not None:
        return lambda inputs: every(np.arange(inputs.rows) if inputs.all_logits else inputs.last_rows)

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


def bind_gather_logits(ex: Executor, step: Step) -> Op:
    node = step.node
    views = ex.views(node.out)
    parts: dict[int, list[np.ndarray]] = {}  # each core's first m rows, per m: at TP 32 slicing cost more than the copy

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, True)
        if ex.tp == 1:
            ex.logits = views[0][:m].copy()
            return
        rows = parts.get(m)
        if rows is None:
            rows = parts[m] = [v[:m] for v in views]
        ex.logits = np.concatenate(rows, axis=1)

    return run


def bind_send(ex: Executor, step: Step) -> Op:
    """A pipeline send: each lane's rows of the value, from its core on one stage to its
    core on the next (both are views of their own core's memory)."""
    node, after = step.node, step.last
    srcs, dsts = ex.views(node.inputs[0]), ex.views(node.out)

    def run(inputs: StepInputs) -> None:
        m = ex.sp.value_rows(node.out, ex.rows(inputs, after))
        for src, dst in zip(srcs, dsts, strict=True):
            dst[:m] = src[:m]

    return run


def bind_moe(ex: Executor, step: Step) -> Op:
    node, after = step.node, step.last
    xs, outs = ex.views(node.inputs[0]), ex.views(node.out)
    k, n = node.attrs["k"], node.attrs["experts"]
    lanes = []
    for c in range(ex.tp):
        packs = [ex.held(c)[p] for p in node.params]
        experts = [tuple(packs[1 + 3 * e : 4 + 3 * e]) for e in range(n)]
        lanes.append((xs[c], outs[c], packs[0], experts))
    act = ex.product_act
    counts = ex.routing.setdefault(node.layer, np.zeros(n, np.int64))  # tokens each expert got (report)

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, after)
        for c, (x, out, router, experts) in enumerate(lanes):
            logits = quant.linear(x[:m], router, None, np.empty((m, n), np.float32), act)
            idx, weights = moe.route(logits, k, node.attrs.get("renormalize", True))
            moe.experts(x[:m], idx, weights, experts, out[:m], act)
            if c == 0:  # every core routes the same rows alike: count them once (the report: real rows only)
                ex.step_routing[node.layer] = np.bincount(idx.ravel(), minlength=n)
                np.add(counts, np.bincount(idx[_real_rows(inputs, m)].ravel(), minlength=n), out=counts)

    return run


def _real_rows(inputs: StepInputs, m: int) -> np.ndarray:
    """Which of a step's m token rows are real (not a prefill's padding)."""
    if m == inputs.batch:
        return np.ones(m, bool)
    return (np.arange(inputs.tokens) < inputs.valid[:, None]).ravel()[:m]


def _blocks(ex: Executor, m: int, per: int) -> tuple[int, int]:
    """(rows per core, slots per destination block) of expert parallel's exchange for m rows."""
    rb = -(-m // ex.tp)
    return rb, rb * per


def bind_moe_dispatch(ex: Executor, step: Step) -> Op:
    """Expert parallel: each core routes its own block of rows and packs them per destination
    (device/kernels/moe.py); the combine of the same layer reads back where they went."""
    node = step.node
    xs, sends, routers = ex.views(node.inputs[0]), ex.views(node.out), ex.params(node, 0)
    n, k, per = node.attrs["experts"], node.attrs["k"], node.attrs["per"]
    owners = node.attrs["owners"]
    width = ex.graph.params[node.params[0]].shape[1] + 2
    sent = ex.exchanged.setdefault(node.layer, [None] * ex.tp)
    counts = ex.routing.setdefault(node.layer, np.zeros(n, np.int64))
    act = ex.product_act

    def run(inputs: StepInputs) -> None:
        m = inputs.rows
        rb, cap = _blocks(ex, m, per)
        real = _real_rows(inputs, m)
        step_counts = np.zeros(n, np.int64)
        for c, (x, send, router) in enumerate(zip(xs, sends, routers, strict=True)):
            lo, hi = min(c * rb, m), min((c + 1) * rb, m)
            block = send[: ex.tp * cap].reshape(ex.tp, cap, width)
            logits = quant.linear(x[lo:hi], router, None, np.empty((hi - lo, n), np.float32), act)
            idx, weights = moe.route(logits, k, node.attrs.get("renormalize", True))
            sent[c] = moe.dispatch(x[lo:hi], idx, weights, owners, block)
            step_counts += np.bincount(idx.ravel(), minlength=n)
            np.add(counts, np.bincount(idx[real[lo:hi]].ravel(), minlength=n), out=counts)
        ex.step_routing[node.layer] = step_counts

    return run


def bind_moe_experts(ex: Executor, step: Step) -> Op:
    node = step.node
    recvs, dones = ex.views(node.inputs[0]), ex.views(node.out)
    per, width = node.attrs["per"], dones[0].shape[1]
    held = []
    for c in range(ex.tp):
        packs = [ex.held(c)[p] for p in node.params]
        triples = {e: tuple(packs[3 * e : 3 * e + 3]) for e in range(node.attrs["experts"])}
        held.append({e: t for e, t in triples.items() if t[0].shape[0]})
    act = ex.product_act

    def run(inputs: StepInputs) -> None:
        _, cap = _blocks(ex, inputs.rows, per)
        for recv, done, mine in zip(recvs, dones, held, strict=True):
            moe.expert_blocks(recv[: ex.tp * cap].reshape(ex.tp, cap, width + 2), mine,
                              done[: ex.tp * cap].reshape(ex.tp, cap, width), act)  # fmt: skip

    return run


def bind_moe_combine(ex: Executor, step: Step) -> Op:
    node = step.node
    backs, owns = ex.views(node.inputs[0]), ex.views(node.out)
    per, width = node.attrs["per"], owns[0].shape[1]
    sent = ex.exchanged.setdefault(node.layer, [None] * ex.tp)

    def run(inputs: StepInputs) -> None:
        rb, cap = _blocks(ex, inputs.rows, per)
        for c, (back, own) in enumerate(zip(backs, owns, strict=True)):
            moe.combine(back[: ex.tp * cap].reshape(ex.tp, cap, width), sent[c], own[:rb])

    return run


def bind_exchange(ex: Executor, step: Step) -> Op:
    """An all-to-all or all-gather of expert parallel's buffers: the planned schedule's moves."""
    node = step.node
    ins, outs = ex.views_all(node.inputs[0]), ex.views_all(node.out)
    sp = ex.program.sp

    def run(inputs: StepInputs) -> None:
        src = sp.value_rows(node.inputs[0], inputs.rows) * ins[0].shape[1]
        dst = sp.value_rows(node.out, inputs.rows) * outs[0].shape[1]
        n = src if node.op == "alltoall" else dst

        def flat() -> tuple[list[np.ndarray], list[np.ndarray]]:
            return [v.reshape(-1)[:src] for v in ins], [v.reshape(-1)[:dst] for v in outs]

        ex.exchange(node.op, node.out, n, flat).replay(np.add)

    return run


def _states(ex: Executor, node, inputs: StepInputs) -> list:
    """Each core's KV cache (or recurrent state) of the node's layer, for the step's slots
    (a server's step may run on some of the session's slots)."""
    states = [ex.kv[c][node.layer] for c in ex.lanes]
    first, b = inputs.first_slot, inputs.batch
    return [s.of_slots(first, b) if first or b != s.slots else s for s in states]


def bind_shift(ex: Executor, step: Step) -> Op:
    node = step.node
    xs, outs, which = ex.views(node.inputs[0]), ex.views(node.out), node.attrs["state"]

    def run(inputs: StepInputs) -> None:
        m = inputs.rows
        for x, out, state in zip(xs, outs, _states(ex, node, inputs), strict=True):
            recurrent.shift(x[:m], getattr(state, which), inputs.start, inputs.valid, inputs.tokens, out[:m])

    return run


def bind_mix(ex: Executor, step: Step) -> Op:
    node = step.node
    xs, ss, outs = ex.views(node.inputs[0]), ex.views(node.inputs[1]), ex.views(node.out)
    ws = ex.params(node, 0)  # vectors stay fp32 arrays

    def run(inputs: StepInputs) -> None:
        m = inputs.rows
        for x, shifted, w, out in zip(xs, ss, ws, outs, strict=True):
            recurrent.mix(x[:m], shifted[:m], w, out[:m])

    return run


def bind_wkv(ex: Executor, step: Step) -> Op:
    node = step.node
    ks, vs, outs = ex.views(node.inputs[0]), ex.views(node.inputs[1]), ex.views(node.out)
    decays, firsts = ex.params(node, 0), ex.params(node, 1)

    def run(inputs: StepInputs) -> None:
        m = inputs.rows
        for k, v, decay, first, out, s in zip(ks, vs, decays, firsts, outs, _states(ex, node, inputs), strict=True):
            recurrent.wkv(k[:m], v[:m], decay, first, s.num, s.den, s.max, inputs.start, inputs.valid,
                          inputs.tokens, out[:m])  # fmt: skip

    return run


def bind_scale(ex: Executor, step: Step) -> Op:
    node = step.node
    xs, factor = ex.views(node.inputs[0]), np.float32(node.attrs["factor"])

    def run(inputs: StepInputs) -> None:
        m = ex.rows(inputs, step.last)
        for x in xs:
            x[:m] *= factor

    return run
