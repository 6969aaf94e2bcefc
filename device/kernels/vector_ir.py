"""Inner loops of the low-precision matrix products (block formats, fp16/bf16, fp8, int8),
written as LLVM vector IR.

Numba's loop vectorizer kept the nibble kernels' lane accumulators in memory (a store and
a reload per block) and left a scalar chain for the blocks' offsets; the 16- and 8-bit
formats went through a table lookup per weight, which does not vectorize. These
`numba.extending.intrinsic`s build one row's loop themselves: the accumulators are SSA
vectors (registers), the codes are widened once per block, and a block's scale is read as
the fp16 the file stores, converted and broadcast where the block is read. The IR is
target-independent (`<16 x float>`, `fpext half` where the target has F16C, integer
operations where it has not): LLVM lowers it to AVX-512, AVX2, SSE2 or NEON as the target
has. q8_0 and the dense formats go one row per call: interleaving four rows shared the
loads of x but cut the rate at which the weights stream from memory by more than half
(measured on SmolLM2's q8_0 output head, an earlier session). The nibble formats also have a
four-row form (`q4_1_rows`, `q4_0_rows`), which a decode step uses where the target has
AVX-512: rows of a few blocks (a row-parallel product over 9 cores has 2 to 6 blocks a row)
ran 1.4x faster, and a weight streamed from memory as fast as one row at a time (16-17 GB/s
for a 16-18 MB q4_1 weight on 2 threads, an Intel host, 2026-12-05); with AVX2's 16 vector
registers the four rows spill and one row a call is faster (`FOUR_ROWS`).

Every product is fp32 arithmetic on the stored values, accumulated in fp32 lanes and summed
once per row in a fixed order. No fast-math flag is set anywhere here: a multiply-add is an
explicit `llvm.fma` (one rounding, on every ISA: the FMA unit where the host has one, libm's
`fmaf` where it has not), every other operation is a plain IEEE one, so LLVM may neither
reassociate a sum nor choose its own contractions. A row's result is therefore the same bits
on every x86-64 target (docs/numerics.md), NaN and infinity propagate as IEEE says, and the
`*_decoded` forms give the `*_row` bits by construction. A scale is factored out of a block's
sum only where that is exact in the products (q8_0, and q4_0 with signed nibbles q - 8), so
the rounding error stays bounded by sum |x| |w|; q4_1's weights are decoded (q * d + m)
before they meet x, since pulling the offset out of the sum would add error proportional
to |m| where q * d + m cancels.

Intrinsics (numba calls them like functions inside `@njit` code); xl_b, xh_b are the 16 x
values that block b's low and high nibbles pair with, d and m the blocks' scales and offsets as
the fp16 bits the file stores (each converted where its block is read):
- `q4_1_row(xl, xh, qs, d, m)`: `sum_b xl_b . (lo_b * d_b + m_b) + xh_b . (hi_b * d_b + m_b)`.
- `q4_0_row(xl, xh, qs, d)`: `sum_b d_b * (xl_b . (lo_b - 8) + xh_b . (hi_b - 8))`.
- `q4_1_rows(xl, xh, qs, d, m, n)`, `q4_0_rows(xl, xh, qs, d, n)`: rows n .. n + ROWS - 1 of
  the 2-d arrays at once, a tuple of each row's `*_row` result (the same operations in the
  same order per row, so the same bits).
- `q8_0_row(x, qs, d)`: one row of int8 blocks of 32: `sum_b d_b * (x_b . q_b)`.
- `fp32_row(x, w)`, `fp16_row(x, w)`, `bf16_row`, `int8_row`, `fp8_e4m3_row`, `fp8_e5m2_row`: `sum_k x[k] * w[k]`
  for one row of fp32 values, float bit patterns (widened exactly) or int8 codes; the caller applies
  the per-channel scale of int8 and fp8.
- `*_decode(qs, [d, m,] w...)` write a row's decoded values (q4_1: the weights; q4_0, q8_0:
  the codes as floats) and `*_decoded(x..., w..., [d])` give the `*_row` result from them,
  bit for bit: a prefill decodes each weight row once for all its x rows.
- `*_decoded_rows(x... 2-d, m0, w..., [d])`: `*_decoded` for x rows m0 .. m0 + X_ROWS - 1,
  a tuple; `fp32_rows(x 2-d, m0, w)` and the other dense `*_rows`: the `*_row` results of
  DENSE_ROWS x rows. Each x row keeps its own chains (the same bits); the weight row is
  loaded once for them all.
- `weighted_rows(p, values 2-d, lo, n, out)`: attention's weighted values, `out[i] =
  sum_j p[j] * values[lo + j, i]` with a scalar loop's operations (a product, then a sum).

numba's on-disk cache stamps a kernel with its own file only; the kernel modules that call
these intrinsics add this file's bytes to their stamp (`jit_cache.depends_on`), so an edit
here recompiles them.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

F32 = ir.FloatType()
HALF = ir.HalfType()
I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


def _vec(t: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(t, n)


def _int(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _splat(builder: ir.IRBuilder, value: ir.Value, n: int) -> ir.Value:
    undef = ir.Constant(_vec(value.type, n), ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(_vec(I32, n), [0] * n))


def _hsum(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Pairwise halving: a fixed order, so reruns give the same bits."""
    n = v.type.count
    while n > 1:
        h = n // 2
        low = builder.shuffle_vector(v, v, ir.Constant(_vec(I32, h), list(range(h))))
        high = builder.shuffle_vector(v, v, ir.Constant(_vec(I32, h), list(range(h, n))))
        v = builder.fadd(low, high)
        n = h
    return builder.extract_element(v, ir.Constant(I32, 0))


def target_has(feature: str) -> bool:
    """Whether numba compiles for a CPU with this LLVM feature: this host's features unless
    NUMBA_CPU_FEATURES names others (NUMBA_CPU_NAME=generic implies none)."""
    from llvmlite import binding
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return f"+{feature}" in config.CPU_FEATURES.split(",")
    return bool(binding.get_host_cpu_features().get(feature))


def half_to_float(builder: ir.IRBuilder, bits: ir.Value) -> ir.Value:
    """fp16 bit patterns (i16, or a vector of them) to the fp32 values they stand for,
    exactly. With F16C this is `fpext half` (one instruction); without it LLVM would call
    compiler-rt's `__extendhfsf2`, which numba's JIT does not link, so the bits are moved
    into an fp32 by integer operations (subnormals through one exact subtraction)."""
    n = bits.type.count if isinstance(bits.type, ir.VectorType) else 0

    def ty(t):
        return _vec(t, n) if n else t

    if target_has("f16c"):
        return builder.fpext(builder.bitcast(bits, ty(HALF)), ty(F32))

    def k(v, t=I32):
        return ir.Constant(ty(t), [v] * n if n else v)

    h = builder.zext(bits, ty(I32))
    o = builder.shl(builder.and_(h, k(0x7FFF)), k(13))  # exponent and mantissa, in fp32's places
    exponent = builder.and_(o, k(0x7C00 << 13))
    o = builder.add(o, k((127 - 15) << 23))  # rebias
    special = builder.icmp_unsigned("==", exponent, k(0x7C00 << 13))
    o = builder.select(special, builder.add(o, k((128 - 16) << 23)), o)  # infinity or NaN: exponent all ones
    tiny = builder.icmp_unsigned("==", exponent, k(0))
    magic = ir.Constant(ty(F32), [2.0**-14] * n if n else 2.0**-14)  # the bits (113 << 23)
    subnormal = builder.bitcast(
        builder.fsub(builder.bitcast(builder.add(o, k(1 << 23)), ty(F32)), magic), ty(I32)
    )  # mantissa * 2^-24, exactly
    o = builder.select(tiny, subnormal, o)
    return builder.bitcast(builder.or_(o, builder.shl(builder.and_(h, k(0x8000)), k(16))), ty(F32))


def _declare(module: ir.Module, name: str, ret: ir.Type, params: list) -> ir.Function:
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, ir.FunctionType(ret, params), name)


def fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    """`a * b + c` with one rounding (`llvm.fma`), for float vectors of any width."""
    t = a.type
    name = f"llvm.fma.v{t.count}f32" if isinstance(t, ir.VectorType) else "llvm.fma.f32"
    return builder.call(_declare(builder.module, name, t, [t, t, t]), [a, b, c])


def _load_vec(builder: ir.IRBuilder, ptr: ir.Value, index: ir.Value, elem: ir.Type, n: int) -> ir.Value:
    p = builder.bitcast(builder.gep(ptr, [index]), _vec(elem, n).as_pointer())
    return builder.load(p, align={I8: 1, I16: 2}.get(elem, 4))


def _loop(builder: ir.IRBuilder, start: ir.Value, stop: ir.Value, inits: list, body) -> list:
    """`for i in range(start, stop): state = body(i, state)`; the final state, as values."""
    fn = builder.function
    pre = builder.block
    head, block, done = fn.append_basic_block("head"), fn.append_basic_block("body"), fn.append_basic_block("done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(I64)
    i.add_incoming(start, pre)
    state = []
    for v in inits:
        phi = builder.phi(v.type)
        phi.add_incoming(v, pre)
        state.append(phi)
    builder.cbranch(builder.icmp_signed("<", i, stop), block, done)
    builder.position_at_end(block)
    new = body(i, state)
    end = builder.block
    i.add_incoming(builder.add(i, _int(1)), end)
    for phi, v in zip(state, new, strict=True):
        phi.add_incoming(v, end)
    builder.branch(head)
    builder.position_at_end(done)
    return state


def _array(context, builder, ty, value):
    return context.make_array(ty)(context, builder, value)


def _check(*pairs: tuple) -> None:
    for ty, dtype, ndim in pairs:
        if not (isinstance(ty, types.Array) and ty.dtype == dtype and ty.ndim == ndim and ty.layout == "C"):
            raise TypingError(f"expected a C-contiguous {ndim}-d array of {dtype}, got {ty}")


def _in_lanes(builder: ir.IRBuilder, n: ir.Value, width: int, step, inits: list) -> tuple[list, list]:
    """`step(at, lanes, state)` over n items: `width` lanes at a time, then one at a time (as
    1-lane vectors, so a step is written once); the two final states."""
    vectors = builder.sdiv(n, _int(width))
    wide = _loop(builder, _int(0), vectors, inits[0], lambda i, st: step(builder.mul(i, _int(width)), width, st))
    narrow = _loop(builder, builder.mul(vectors, _int(width)), n, inits[1], lambda i, st: step(i, 1, st))
    return wide, narrow


def _nibble_values(builder: ir.IRBuilder, fmt: str, packed: ir.Value, d: ir.Value, m: ir.Value | None) -> list:
    """The values a block's 16 bytes of nibble pairs stand for, low nibbles then high, as two
    <16 x float>: q - 8 (q4_0) or fma(q, d, m) (q4_1; d, m broadcast). With AVX-512 a block's
    16 possible values are formed once (one fma over 0..15) and each nibble picks its own
    (`vpermps`): the same fma of the same operands, so the same bits, in fewer instructions
    (decode of SmolLM2's q4_1 weights 1.16-1.24x faster on this Intel host)."""
    width = 16
    e = builder.zext(packed, _vec(I32, width))
    codes = [
        builder.and_(e, ir.Constant(_vec(I32, width), [15] * width)),
        builder.lshr(e, ir.Constant(_vec(I32, width), [4] * width)),
    ]
    if target_has("avx512f"):
        if fmt == "q4_0":
            table = ir.Constant(_vec(F32, width), [float(i - 8) for i in range(width)])
        else:
            table = fma(builder, ir.Constant(_vec(F32, width), [float(i) for i in range(width)]), d, m)
        t = table.type
        permute = _declare(builder.module, "llvm.x86.avx512.permvar.sf.512", t, [t, codes[0].type])
        return [builder.call(permute, [table, c]) for c in codes]
    if fmt == "q4_0":
        return [
            builder.sitofp(builder.sub(c, ir.Constant(_vec(I32, width), [8] * width)), _vec(F32, width)) for c in codes
        ]
    return [fma(builder, builder.sitofp(c, _vec(F32, width)), d, m) for c in codes]


def _accumulate(builder: ir.IRBuilder, fmt: str, x: list, v: list, d: ir.Value | None, state: list) -> list:
    """One block of a row added to the row's chains, given x's vectors, the block's values
    and (q4_0, q8_0) its broadcast scale: q4_1 keeps the low and high halves in chains of
    their own (decoded weights times x); q4_0 and q8_0 one chain of d * (x . codes), the
    scale factored out of exact products. Every row form calls this, so all give the same bits."""
    if fmt == "q4_1":
        return [fma(builder, xi, vi, si) for xi, vi, si in zip(x, v, state, strict=True)]
    s = builder.fmul(x[0], v[0])
    if len(x) == 2:
        s = fma(builder, x[1], v[1], s)
    return [fma(builder, s, d, state[0])]


def _finish(builder: ir.IRBuilder, fmt: str, chains: list) -> ir.Value:
    """A row's result from its chains (`_accumulate`)."""
    return _hsum(builder, builder.fadd(*chains) if fmt == "q4_1" else chains[0])


def _block_scale(builder: ir.IRBuilder, base: ir.Value, b: ir.Value, width: int) -> ir.Value:
    """Block b's scale (fp16 bits, as stored from `base`) in every lane."""
    return _splat(builder, half_to_float(builder, builder.load(builder.gep(base, [b]))), width)


def _row_codegen(fmt: str, mode: str = "codes"):
    """One output row of `q4_1`, `q4_0` (16 bytes of nibble pairs per block) or `q8_0` blocks.

    mode "codes" reads the stored codes and returns the row's dot product with x; "decode"
    writes the values that product multiplies x by (q4_1: q * d + m; q4_0: q - 8; q8_0: q) to
    fp32 rows; "decoded" returns the same dot product from those rows, bit for bit, so
    several x rows (a prefill) decode each weight row once."""
    width = 32 if fmt == "q8_0" else 16  # codes loaded per block
    halves = 1 if fmt == "q8_0" else 2  # value vectors per block: x's low and high partners

    def codegen(context, builder, sig, args):
        arrays = [_array(context, builder, t, a) for t, a in zip(sig.args, args, strict=True)]
        zero = ir.Constant(_vec(F32, width), [0.0] * width)

        def at_block(arr, b):
            return _block_scale(builder, arr.data, b, width)

        if mode == "decode":
            q, *rest = arrays
            scales, ws = (rest[:2], rest[2:]) if fmt == "q4_1" else ([], rest)
            xs = []
        elif mode == "decoded":
            xs, ws, scales = arrays[:halves], arrays[halves : 2 * halves], arrays[2 * halves :]
        else:
            xs, q, scales, ws = arrays[:halves], arrays[halves], arrays[halves + 1 :], []
        blocks = builder.sdiv(ws[0].nitems, _int(width)) if ws else scales[0].nitems

        def values(b, at):
            if mode == "decoded":
                return [_load_vec(builder, w.data, at, F32, width) for w in ws]
            if fmt == "q8_0":
                return [builder.sitofp(_load_vec(builder, q.data, at, I8, width), _vec(F32, width))]
            packed = _load_vec(builder, q.data, at, I8, width)
            if fmt == "q4_0":
                return _nibble_values(builder, fmt, packed, None, None)
            db, mb = at_block(scales[0], b), at_block(scales[1], b)  # q4_1: each weight decoded
            return _nibble_values(builder, fmt, packed, db, mb)

        if mode == "decode":

            def store(b, state):
                at = builder.mul(b, _int(width))
                for w, v in zip(ws, values(b, at), strict=True):
                    builder.store(v, builder.bitcast(builder.gep(w.data, [at]), _vec(F32, width).as_pointer()), align=4)
                return state

            _loop(builder, _int(0), blocks, [], store)
            return context.get_dummy_value()

        def step(b, state):
            at = builder.mul(b, _int(width))
            v = values(b, at)
            x = [_load_vec(builder, xi.data, at, F32, width) for xi in xs]
            return _accumulate(builder, fmt, x, v, None if fmt == "q4_1" else at_block(scales[-1], b), state)

        chains = _loop(builder, _int(0), blocks, [zero] * (2 if fmt == "q4_1" else 1), step)
        return _finish(builder, fmt, chains)

    return codegen


ROWS = 4  # weight rows of `q4_1_rows` / `q4_0_rows`
# Whether a decode step takes its nibble rows ROWS at a time: with AVX-512's 32 vector registers
# the four rows' chains stay in them (1.0-1.1x at TP 1 and 9, Intel Xeon, 2026-12-05); with
# AVX2's 16 they spill, and one row a call is faster (SmolLM2 native decode 36.5 -> 46.5 tokens/s
# at TP 1 and 34.9 -> 42.9 at TP 3, AMD EPYC, 2026-12-07). The same bits either way. A target's
# features are part of numba's cache key, so a cached kernel always saw its own target's choice.
FOUR_ROWS = target_has("avx512f")


def _rows_codegen(fmt: str):
    """ROWS consecutive output rows of `q4_1` or `q4_0` blocks from row n0, as a tuple: each
    row's chains are its own, built by the block step `_row_codegen(fmt)` uses
    (`_accumulate`, `_finish`: so the same bits), interleaved so that the rows'
    chains overlap and each block of x is loaded once for them all (short rows, as a
    row-parallel product over many cores has, spent most of their time on one chain)."""
    width = 16

    def codegen(context, builder, sig, args):
        xl, xh, q, d = (_array(context, builder, t, a) for t, a in zip(sig.args[:4], args[:4], strict=True))
        m = _array(context, builder, sig.args[4], args[4]) if fmt == "q4_1" else None
        n0 = args[-1]
        zero = ir.Constant(_vec(F32, width), [0.0] * width)
        blocks = builder.extract_value(d.shape, 1)
        q_row = builder.extract_value(q.shape, 1)

        rows = [builder.add(n0, _int(r)) for r in range(ROWS)]
        codes_at = [builder.gep(q.data, [builder.mul(r, q_row)]) for r in rows]
        d_at = [builder.gep(d.data, [builder.mul(r, blocks)]) for r in rows]
        m_at = [builder.gep(m.data, [builder.mul(r, blocks)]) for r in rows] if m else []

        def scale(base, b):
            return _block_scale(builder, base, b, width)

        def step(b, state):
            at = builder.mul(b, _int(width))
            x = [_load_vec(builder, xl.data, at, F32, width), _load_vec(builder, xh.data, at, F32, width)]
            new = []
            for r in range(ROWS):
                packed = _load_vec(builder, codes_at[r], at, I8, width)
                mine = state[chains * r : chains * (r + 1)]
                if fmt == "q4_1":
                    v = _nibble_values(builder, fmt, packed, scale(d_at[r], b), scale(m_at[r], b))
                    new += _accumulate(builder, fmt, x, v, None, mine)
                else:
                    v = _nibble_values(builder, fmt, packed, None, None)
                    new += _accumulate(builder, fmt, x, v, scale(d_at[r], b), mine)
            return new

        chains = 2 if fmt == "q4_1" else 1
        final = _loop(builder, _int(0), blocks, [zero] * (chains * ROWS), step)
        sums = [_finish(builder, fmt, final[chains * r : chains * (r + 1)]) for r in range(ROWS)]
        return context.make_tuple(builder, sig.return_type, sums)

    def typer(typingctx, *args):
        arrays = args[:-1]
        want = [(types.float32, 1), (types.float32, 1), (types.uint8, 2), (types.uint16, 2)]
        want += [(types.uint16, 2)] if fmt == "q4_1" else []
        _check(*((a, dtype, ndim) for a, (dtype, ndim) in zip(arrays, want, strict=True)))
        if not isinstance(args[-1], types.Integer):
            raise TypingError("the first row is an integer")
        return types.UniTuple(types.float32, ROWS)(*args), codegen

    if fmt == "q4_1":
        return intrinsic(lambda typingctx, xl, xh, q, d, m, n0: typer(typingctx, xl, xh, q, d, m, n0))
    return intrinsic(lambda typingctx, xl, xh, q, d, n0: typer(typingctx, xl, xh, q, d, n0))


X_ROWS = 3  # x rows of `*_decoded_rows`
DENSE_ROWS = 4  # x rows of the dense `*_rows`: one chain a row, so one more row fits


def _x_rows(builder: ir.IRBuilder, x, m0: ir.Value, n: int) -> list:
    """Where rows m0 .. m0 + n - 1 of the 2-d C array `x` start."""
    width = builder.extract_value(x.shape, 1)
    return [builder.gep(x.data, [builder.mul(builder.add(m0, _int(i)), width)]) for i in range(n)]


def _decoded_rows_codegen(fmt: str):
    """`*_decoded` for X_ROWS consecutive rows of x from row m0 against one decoded weight
    row, as a tuple: each x row's chains are its own, built by `_accumulate` and summed by
    `_finish` as in `*_decoded` (so the same bits), and each block of the weight row (and
    its scale) is loaded once for them all. A prefill's products ran 1.45x faster on an AVX2
    host (AMD EPYC, 2026-12-07): one x row at a time, a block's four loads fed two fused
    multiply-adds, and each chain waited on its own previous one. Three rows of chains fit
    AVX2's sixteen registers; four spilled and ran slower than one."""
    width = 32 if fmt == "q8_0" else 16
    halves = 1 if fmt == "q8_0" else 2
    chains = 2 if fmt == "q4_1" else 1

    def codegen(context, builder, sig, args):
        xs = [_array(context, builder, t, a) for t, a in zip(sig.args[:halves], args[:halves], strict=True)]
        m0 = args[halves]
        rest = [_array(context, builder, t, a) for t, a in zip(sig.args[halves + 1 :], args[halves + 1 :], strict=True)]
        ws, scale = rest[:halves], rest[halves:]
        zero = ir.Constant(_vec(F32, width), [0.0] * width)
        blocks = builder.sdiv(ws[0].nitems, _int(width))
        rows = list(zip(*(_x_rows(builder, x, m0, X_ROWS) for x in xs), strict=True))  # per row, its halves

        def step(b, state):
            at = builder.mul(b, _int(width))
            v = [_load_vec(builder, w.data, at, F32, width) for w in ws]
            d = _block_scale(builder, scale[0].data, b, width) if scale else None
            new = []
            for i in range(X_ROWS):
                x = [_load_vec(builder, base, at, F32, width) for base in rows[i]]
                new += _accumulate(builder, fmt, x, v, d, state[chains * i : chains * (i + 1)])
            return new

        final = _loop(builder, _int(0), blocks, [zero] * (chains * X_ROWS), step)
        sums = [_finish(builder, fmt, final[chains * i : chains * (i + 1)]) for i in range(X_ROWS)]
        return context.make_tuple(builder, sig.return_type, sums)

    def typer(typingctx, *args):
        want = [(types.float32, 2)] * halves + [None] + [(types.float32, 1)] * halves
        want += [] if fmt == "q4_1" else [(types.uint16, 1)]
        _check(*((a, *w) for a, w in zip(args, want, strict=True) if w is not None))
        if not isinstance(args[halves], types.Integer):
            raise TypingError("the first x row is an integer")
        return types.UniTuple(types.float32, X_ROWS)(*args), codegen

    if fmt == "q4_1":
        return intrinsic(lambda typingctx, xl, xh, m0, wl, wh: typer(typingctx, xl, xh, m0, wl, wh))
    if fmt == "q4_0":
        return intrinsic(lambda typingctx, xl, xh, m0, wl, wh, d: typer(typingctx, xl, xh, m0, wl, wh, d))
    return intrinsic(lambda typingctx, x, m0, c, d: typer(typingctx, x, m0, c, d))


def _dense_codegen(fmt: str):
    """One row of fp32 values or of fp16, bf16, fp8 or int8 codes: sum_k x[k] * value(w[k]),
    16 lanes then the rest (each lane a chain of fused multiply-adds)."""
    elem = {"fp32": F32, "fp16": I16, "bf16": I16}.get(fmt, I8)

    def codegen(context, builder, sig, args):
        x, w = (_array(context, builder, t, a) for t, a in zip(sig.args, args, strict=True))

        def step(at, lanes, state):
            codes = _load_vec(builder, w.data, at, elem, lanes)
            return [fma(builder, _load_vec(builder, x.data, at, F32, lanes), _widen(builder, codes, fmt), state[0])]

        zeros = [[ir.Constant(_vec(F32, n), [0.0] * n)] for n in (16, 1)]
        (acc,), (rest,) = _in_lanes(builder, w.nitems, 16, step, zeros)
        return builder.fadd(_hsum(builder, acc), _hsum(builder, rest))

    return codegen


def _dense_rows_codegen(fmt: str):
    """`_dense_codegen`'s row for DENSE_ROWS consecutive rows of x from row m0 against one
    weight row, as a tuple: each x row keeps its own lanes and sums them as the one-row
    form does (so the same bits); the weight's codes are loaded and widened once for all.
    A prefill of 768 tokens of a 6-layer, 768-wide Llama ran 1.30x faster in fp32 and 1.27x
    in bf16 on an AVX2 host (AMD EPYC, 2026-12-07); three rows gave 1.15x and 1.21x."""
    elem = {"fp32": F32, "fp16": I16, "bf16": I16}.get(fmt, I8)

    def codegen(context, builder, sig, args):
        x = _array(context, builder, sig.args[0], args[0])
        m0 = args[1]
        w = _array(context, builder, sig.args[2], args[2])
        rows = _x_rows(builder, x, m0, DENSE_ROWS)

        def step(at, lanes, state):
            v = _widen(builder, _load_vec(builder, w.data, at, elem, lanes), fmt)
            x = [_load_vec(builder, row, at, F32, lanes) for row in rows]
            return [fma(builder, xi, v, acc) for xi, acc in zip(x, state, strict=True)]

        zeros = [[ir.Constant(_vec(F32, n), [0.0] * n)] * DENSE_ROWS for n in (16, 1)]
        wide, narrow = _in_lanes(builder, w.nitems, 16, step, zeros)
        sums = [builder.fadd(_hsum(builder, a), _hsum(builder, b)) for a, b in zip(wide, narrow, strict=True)]
        return context.make_tuple(builder, sig.return_type, sums)

    code = {"fp32": types.float32, "fp16": types.uint16, "bf16": types.uint16, "int8": types.int8}.get(fmt, types.uint8)

    def typer(typingctx, x, m0, w):
        _check((x, types.float32, 2), (w, code, 1))
        if not isinstance(m0, types.Integer):
            raise TypingError("the first x row is an integer")
        return types.UniTuple(types.float32, DENSE_ROWS)(x, m0, w), codegen

    return intrinsic(typer)


def _weighted_codegen(context, builder, sig, args):
    """`out[i] = sum_j p[j] * values[lo + j, i]` for j < n, each element's terms added to
    +0.0 one after another, each a product and a sum of their own (no fused multiply-add):
    the operations of a scalar loop over j, so its bits. The sums stay in registers, 64
    elements at a time (then 16, then one), where a scalar loop stored and reloaded them
    each term: it may not assume `out` and `values` apart."""
    p, values, out = (_array(context, builder, sig.args[i], args[i]) for i in (0, 1, 4))
    lo, n = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (2, 3))
    d = builder.extract_value(values.shape, 1)

    def span(first: ir.Value, lanes: int, count: int) -> list:
        """Elements first .. first + lanes * count - 1 of the row, their sums in `count`
        vectors; no loop state (`_loop`'s body)."""
        zero = ir.Constant(_vec(F32, lanes), [0.0] * lanes)

        def term(j, sums):
            pj = _splat(builder, builder.load(builder.gep(p.data, [j])), lanes)
            base = builder.gep(values.data, [builder.add(builder.mul(builder.add(lo, j), d), first)])
            new = []
            for c, acc in enumerate(sums):
                v = _load_vec(builder, base, _int(c * lanes), F32, lanes)
                new.append(builder.fadd(acc, builder.fmul(pj, v)))
            return new

        sums = _loop(builder, _int(0), n, [zero] * count, term)
        for c, acc in enumerate(sums):
            at = builder.add(first, _int(c * lanes))
            builder.store(acc, builder.bitcast(builder.gep(out.data, [at]), _vec(F32, lanes).as_pointer()), align=4)
        return []

    groups = builder.sdiv(d, _int(64))
    _loop(builder, _int(0), groups, [], lambda g, _: span(builder.mul(g, _int(64)), 16, 4))
    start = builder.mul(groups, _int(64))
    wide = builder.sdiv(builder.sub(d, start), _int(16))
    _loop(builder, _int(0), wide, [], lambda c, _: span(builder.add(start, builder.mul(c, _int(16))), 16, 1))
    _loop(builder, builder.add(start, builder.mul(wide, _int(16))), d, [], lambda i, _: span(i, 1, 1))
    return context.get_dummy_value()


@intrinsic
def weighted_rows(typingctx, p, values, lo, n, out):
    """(p, values 2-d, lo, n, out): out[i] = sum over j < n of p[j] * values[lo + j, i]."""
    _check((p, types.float32, 1), (values, types.float32, 2), (out, types.float32, 1))
    if not (isinstance(lo, types.Integer) and isinstance(n, types.Integer)):
        raise TypingError("lo and n are integers")
    return types.void(p, values, lo, n, out), _weighted_codegen


def _widen(builder: ir.IRBuilder, codes: ir.Value, fmt: str) -> ir.Value:
    """A vector of codes to the fp32 values they stand for, exactly. An fp8 code is the top of
    an fp16 with a narrower exponent: e5m2 is fp16's top byte as it is; e4m3fn's magnitude
    bits, shifted into an fp16, read as 2^-8 times the value (subnormals included), and its
    one NaN code per sign is kept NaN. bf16 is the top half of an fp32."""
    n = codes.type.count
    if fmt == "fp32":
        return codes

    def k(c, t=I16):
        return ir.Constant(_vec(t, n), [c] * n)

    def from_half(bits):
        return half_to_float(builder, bits)

    if fmt == "int8":
        return builder.sitofp(codes, _vec(F32, n))
    if fmt == "fp16":
        return from_half(codes)
    if fmt == "bf16":
        return builder.bitcast(builder.shl(builder.zext(codes, _vec(I32, n)), k(16, I32)), _vec(F32, n))
    b = builder.zext(codes, _vec(I16, n))
    if fmt == "fp8_e5m2":
        return from_half(builder.shl(b, k(8)))
    magnitude = builder.and_(b, k(0x7F))
    value = builder.fmul(
        from_half(builder.or_(builder.shl(magnitude, k(7)), builder.shl(builder.and_(b, k(0x80)), k(8)))), k(256.0, F32)
    )
    return builder.select(builder.icmp_unsigned("==", magnitude, k(0x7F)), k(float("nan"), F32), value)


def _intrinsic(codegen, spec: list, result=types.float32) -> object:
    """An intrinsic over 1-d C arrays of the given dtypes (numba reads the typer's
    parameters, so each arity is spelled out)."""

    def sig(args: tuple) -> tuple:
        _check(*((a, dtype, 1) for a, dtype in zip(args, spec, strict=True)))
        return result(*args), codegen

    typers = {
        2: lambda typingctx, a, b: sig((a, b)),
        3: lambda typingctx, a, b, c: sig((a, b, c)),
        4: lambda typingctx, a, b, c, d: sig((a, b, c, d)),
        5: lambda typingctx, a, b, c, d, e: sig((a, b, c, d, e)),
        6: lambda typingctx, a, b, c, d, e, f: sig((a, b, c, d, e, f)),
    }
    return intrinsic(typers[len(spec)])


F, U8, I8T, U16, VOID = types.float32, types.uint8, types.int8, types.uint16, types.void
q4_1_row = _intrinsic(_row_codegen("q4_1"), [F, F, U8, U16, U16])  # (xl, xh, qs, d, m)
q4_0_row = _intrinsic(_row_codegen("q4_0"), [F, F, U8, U16])  # (xl, xh, qs, d)
q4_1_rows = _rows_codegen("q4_1")  # (xl, xh, qs 2-d, d 2-d, m 2-d, first row) -> ROWS sums
q4_0_rows = _rows_codegen("q4_0")  # (xl, xh, qs 2-d, d 2-d, first row) -> ROWS sums
q8_0_row = _intrinsic(_row_codegen("q8_0"), [F, I8T, U16])  # (x, qs, d)
q4_1_decode = _intrinsic(_row_codegen("q4_1", "decode"), [U8, U16, U16, F, F], VOID)  # (qs, d, m, wl, wh)
q4_0_decode = _intrinsic(_row_codegen("q4_0", "decode"), [U8, F, F], VOID)  # (qs, wl, wh)
q8_0_decode = _intrinsic(_row_codegen("q8_0", "decode"), [I8T, F], VOID)  # (qs, c)
q4_1_decoded = _intrinsic(_row_codegen("q4_1", "decoded"), [F, F, F, F])  # (xl, xh, wl, wh)
q4_0_decoded = _intrinsic(_row_codegen("q4_0", "decoded"), [F, F, F, F, U16])  # (xl, xh, wl, wh, d)
q8_0_decoded = _intrinsic(_row_codegen("q8_0", "decoded"), [F, F, U16])  # (x, c, d)
q4_1_decoded_rows = _decoded_rows_codegen("q4_1")  # (xl 2-d, xh 2-d, m0, wl, wh) -> X_ROWS sums
q4_0_decoded_rows = _decoded_rows_codegen("q4_0")  # (xl 2-d, xh 2-d, m0, wl, wh, d)
q8_0_decoded_rows = _decoded_rows_codegen("q8_0")  # (x 2-d, m0, c, d)
fp32_row = _intrinsic(_dense_codegen("fp32"), [F, F])  # (x, w)
fp16_row = _intrinsic(_dense_codegen("fp16"), [F, U16])  # (x, w): w the fp16 bit patterns
bf16_row = _intrinsic(_dense_codegen("bf16"), [F, U16])
int8_row = _intrinsic(_dense_codegen("int8"), [F, I8T])
fp8_e4m3_row = _intrinsic(_dense_codegen("fp8_e4m3"), [F, U8])
fp8_e5m2_row = _intrinsic(_dense_codegen("fp8_e5m2"), [F, U8])
fp32_rows = _dense_rows_codegen("fp32")  # (x 2-d, m0, w) -> DENSE_ROWS sums, each fp32_row(x[m0 + i], w)
fp16_rows = _dense_rows_codegen("fp16")
bf16_rows = _dense_rows_codegen("bf16")
int8_rows = _dense_rows_codegen("int8")
fp8_e4m3_rows = _dense_rows_codegen("fp8_e4m3")
fp8_e5m2_rows = _dense_rows_codegen("fp8_e5m2")
