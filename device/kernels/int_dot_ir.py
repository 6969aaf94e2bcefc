"""Row loops of block-quantized weights times int8-quantized activations, as LLVM vector IR:
integer dot products per block of 32, as llama.cpp computes them.

The activations x are quantized per block of 32 (`q8_act.quantize_rows`): int8 codes qx, an
fp32 scale dx, the codes' integer sum qsum and sx = dx * qsum. A weight block b with codes q,
scale d (and offset m for q4_1) then contributes

- q4_1: `d * dx * (q . qx) + m * sx` (w = q * d + m),
- q4_0: `d * dx * (q . qx - 8 * qsum)` (w = (q - 8) * d),
- q8_0: `d * dx * (|q| . (sign(q) qx))` (w = q * d; as llama.cpp does, the weight's sign moves
  to x so the codes are unsigned bytes),

where the dot products and corrections are exact 32-bit integers: the only rounding is x's
quantization and the fp32 sum over blocks. The byte products go through x86's
`pmaddubsw`/`pmaddwd` (unsigned codes times signed x, four products per 32-bit lane) when
numba compiles for a host with AVX2; LLVM's generic integer vectors otherwise (same
results, bit for bit, since the integer sums are exact).

A row runs 16 blocks at a time: their scales d * dx (and q4_1's offset terms) are computed as
16-lane vectors and picked per pair of blocks by constant shuffles, so the loop body is the
byte products and one fused multiply-add per pair; the last blocks go by pairs, then singly,
into the same 16-lane accumulator, and the row ends in one horizontal sum.

Intrinsics, over 1-d C arrays (`blocks` = d's length; d and m are the fp16 bit patterns as
stored):
- `q4_1_row(qx, dx, sx, qs, d, m)`, `q4_0_row(qx, dx, qsum, qs, d)`: qs the 16 bytes of
  nibble pairs per block (low nibbles pair with x's first 16 values, high with the last 16);
- `q8_0_row(qx, dx, qs, d)`: qs the 32 codes per block, read as uint8.
`make_rows(how)` builds the three for `how` = "avx2" or "generic" (tests compare both).
- `quantize_blocks(x, qx, dx, qsum, sx)`: one row's whole blocks of x to int8 codes, their
  scales, code sums and dx * qsum, in IEEE arithmetic (`q8_act.quantize_rows` uses it).

The float arithmetic carries no fast-math flag (multiply-adds are explicit `llvm.fma`), so
a row's result is the same bits on every x86-64 target. numba's on-disk cache of q8_act.py
is stamped with this file's bytes too (`jit_cache.depends_on`): an edit here recompiles it.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types

from tilesim.device.kernels.vector_ir import (
    F32,
    I8,
    I16,
    I32,
    _array,
    _declare,
    _hsum,
    _int,
    _intrinsic,
    _load_vec,
    _loop,
    _splat,
    _vec,
    fma,
    half_to_float,
    target_has,
)


def host_int_dots() -> str:
    """ "avx2" when numba compiles for a CPU with AVX2 (`vector_ir.target_has`), else "generic"."""
    return "avx2" if target_has("avx2") else "generic"


def _concat(builder: ir.IRBuilder, parts: list) -> ir.Value:
    while len(parts) > 1:
        n = parts[0].type.count
        mask = ir.Constant(_vec(I32, 2 * n), list(range(2 * n)))
        parts = [builder.shuffle_vector(parts[i], parts[i + 1], mask) for i in range(0, len(parts), 2)]
    return parts[0]


def _int_dots(builder: ir.IRBuilder, codes: ir.Value, x: ir.Value, how: str) -> ir.Value:
    """Unsigned codes times signed x, summed in groups of 4 bytes: <n x i8> -> <n/4 x i32>.
    Sums of two products fit an i16 (codes at most 128, |x| at most 127), so pmaddubsw
    never saturates here."""
    n = codes.type.count
    if how == "generic":
        return _sum_quads(builder, builder.mul(builder.zext(codes, _vec(I32, n)), builder.sext(x, _vec(I32, n))))
    module = builder.module
    pairs = _declare(module, "llvm.x86.avx2.pmadd.ub.sw", _vec(I16, 16), [_vec(I8, 32)] * 2)
    quads = _declare(module, "llvm.x86.avx2.pmadd.wd", _vec(I32, 8), [_vec(I16, 16)] * 2)
    ones = ir.Constant(_vec(I16, 16), [1] * 16)
    parts = []
    for c in range(n // 32):
        if n == 32:
            a, b = codes, x
        else:
            part = ir.Constant(_vec(I32, 32), list(range(32 * c, 32 * c + 32)))
            a, b = builder.shuffle_vector(codes, codes, part), builder.shuffle_vector(x, x, part)
        parts.append(builder.call(quads, [builder.call(pairs, [a, b]), ones]))
    return _concat(builder, parts)


def _signed_dots(builder: ir.IRBuilder, w: ir.Value, x: ir.Value) -> ir.Value:
    """Signed bytes times signed bytes, summed in groups of 4: <n x i8> -> <n/4 x i32>."""
    n = w.type.count
    return _sum_quads(builder, builder.mul(builder.sext(w, _vec(I32, n)), builder.sext(x, _vec(I32, n))))


def _sum_quads(builder: ir.IRBuilder, products: ir.Value) -> ir.Value:
    """<n x i32> -> <n/4 x i32>, adjacent pairs twice: the shape x86 compiles to pmaddwd."""
    n = products.type.count
    for lanes in (n // 2, n // 4):
        even, odd = (ir.Constant(_vec(I32, lanes), list(range(j, 2 * lanes, 2))) for j in (0, 1))
        products = builder.add(
            builder.shuffle_vector(products, products, even), builder.shuffle_vector(products, products, odd)
        )
    return products


def _row_codegen(fmt: str, how: str):
    def codegen(context, builder, sig, args):
        arrays = [_array(context, builder, t, a) for t, a in zip(sig.args, args, strict=True)]
        if fmt == "q8_0":
            (qx, dx, qs, d), extra, m = arrays, None, None
        else:
            qx, dx, extra, qs, d = arrays[:5]  # extra: q4_0's code sums, q4_1's dx * code sums
            m = arrays[5] if fmt == "q4_1" else None

        def bytes_(v, n):
            return ir.Constant(_vec(I8, n), [v] * n)

        def halves(b, arr, nb):  # nb fp16 scales from b on, as fp32
            return half_to_float(builder, _load_vec(builder, arr.data, b, I16, nb))

        def raw_dots(b, nb):  # blocks b .. b + nb - 1: <8 nb x i32>, block j's sums in lanes 8j..8j+7
            x = _load_vec(builder, qx.data, builder.mul(b, _int(32)), I8, 32 * nb)
            if fmt == "q8_0":
                return _signed_dots(builder, _load_vec(builder, qs.data, builder.mul(b, _int(32)), I8, 32 * nb), x)
            c = _load_vec(builder, qs.data, builder.mul(b, _int(16)), I8, 16 * nb)
            lo, hi = builder.and_(c, bytes_(15, 16 * nb)), builder.lshr(c, bytes_(4, 16 * nb))
            order = [
                k for j in range(nb) for k in [*range(16 * j, 16 * j + 16), *range(16 * (nb + j), 16 * (nb + j) + 16)]
            ]
            return _int_dots(builder, builder.shuffle_vector(lo, hi, ir.Constant(_vec(I32, 32 * nb), order)), x, how)

        def lanes(v, picks, fill=None):  # a vector of 8 lanes per pick: v[pick] (or one v[pick] and fill)
            mask = [p for p in picks for _ in range(8)]
            if fill is not None:
                mask = [p if j % 8 == 0 else v.type.count for j, p in enumerate(mask)]
            return builder.shuffle_vector(v, v if fill is None else fill, ir.Constant(_vec(I32, len(mask)), mask))

        def zeros(n, t=F32):
            return ir.Constant(_vec(t, n), [0.0 if t == F32 else 0] * n)

        def group(g, state):  # blocks 16 g .. 16 g + 15: their scales and offsets as 16-lane vectors
            b0 = builder.mul(g, _int(16))
            scales = builder.fmul(halves(b0, d, 16), _load_vec(builder, dx.data, b0, F32, 16))
            if fmt == "q4_0":
                minus = builder.mul(_load_vec(builder, extra.data, b0, I32, 16), ir.Constant(_vec(I32, 16), [-8] * 16))
            acc = state[0]
            for j in range(0, 16, 2):
                dots = raw_dots(builder.add(b0, _int(j)), 2)
                if fmt == "q4_0":
                    dots = builder.add(dots, lanes(minus, [j, j + 1], zeros(16, I32)))
                acc = fma(builder, builder.sitofp(dots, _vec(F32, 16)), lanes(scales, [j, j + 1]), acc)
            if m is None:
                return [acc]
            return [acc, fma(builder, halves(b0, m, 16), _load_vec(builder, extra.data, b0, F32, 16), state[1])]

        def widened(v):  # <n> -> <16>, zeros after: a tail's terms join the 16-lane sums
            n = v.type.count
            mask = [j if j < n else n for j in range(16)]
            return builder.shuffle_vector(v, zeros(n), ir.Constant(_vec(I32, 16), mask))

        def step(b, nb, state):  # blocks b .. b + nb - 1 past the last whole group
            dots = raw_dots(b, nb)
            if fmt == "q4_0":
                minus = builder.mul(_load_vec(builder, extra.data, b, I32, nb), ir.Constant(_vec(I32, nb), [-8] * nb))
                dots = builder.add(dots, lanes(minus, range(nb), zeros(nb, I32)))
            scale = builder.fmul(halves(b, d, nb), _load_vec(builder, dx.data, b, F32, nb))
            terms = builder.fmul(builder.sitofp(dots, _vec(F32, 8 * nb)), lanes(scale, range(nb)))
            acc = builder.fadd(widened(terms) if nb == 1 else terms, state[0])
            if m is None:
                return [acc]
            shifts = builder.fmul(halves(b, m, nb), _load_vec(builder, extra.data, b, F32, nb))
            return [acc, builder.fadd(widened(shifts), state[1])]

        blocks = d.nitems
        inits = [zeros(16)] * (1 if m is None else 2)  # products; q4_1's offset terms
        groups = builder.sdiv(blocks, _int(16))
        state = _loop(builder, _int(0), groups, inits, group)
        first = builder.mul(groups, _int(16))
        pairs = builder.sdiv(builder.sub(blocks, first), _int(2))
        state = _loop(
            builder, _int(0), pairs, state, lambda i, st: step(builder.add(first, builder.mul(i, _int(2))), 2, st)
        )
        state = _loop(
            builder, builder.add(first, builder.mul(pairs, _int(2))), blocks, state, lambda b, st: step(b, 1, st)
        )
        return _hsum(builder, state[0] if m is None else builder.fadd(state[0], state[1]))

    return codegen


def _quantize_codegen(context, builder, sig, args):
    """x's whole blocks of 32 to int8 codes: IEEE arithmetic throughout (no fast-math flags), so
    the same bits as the scalar loop in q8_act.quantize_rows, which does the partial block."""
    x, qx, dx, qsum, sx = (_array(context, builder, t, a) for t, a in zip(sig.args, args, strict=True))
    module = builder.module
    f32v, i32v, i1v = _vec(F32, 32), _vec(I32, 32), _vec(ir.IntType(1), 32)
    fabs = _declare(module, "llvm.fabs.v32f32", f32v, [f32v])
    rint = _declare(module, "llvm.rint.v32f32", f32v, [f32v])
    fmax = _declare(module, "llvm.vector.reduce.fmax.v32f32", F32, [f32v])
    any_ = _declare(module, "llvm.vector.reduce.or.v32i1", ir.IntType(1), [i1v])
    add = _declare(module, "llvm.vector.reduce.add.v32i32", I32, [i32v])
    smin = _declare(module, "llvm.smin.v32i32", i32v, [i32v, i32v])
    smax = _declare(module, "llvm.smax.v32i32", i32v, [i32v, i32v])
    inf, top = ir.Constant(F32, float("inf")), ir.Constant(F32, 127.0)
    full = builder.sdiv(x.nitems, _int(32))
    blocks = builder.select(builder.icmp_signed("<", full, dx.nitems), full, dx.nitems)

    def block(b, state):
        at = builder.mul(b, _int(32))
        v = _load_vec(builder, x.data, at, F32, 32)
        magnitude = builder.call(fabs, [v])
        bad = builder.call(any_, [builder.fcmp_unordered("==", magnitude, _splat(builder, inf, 32))])  # nan or inf
        scale = builder.fdiv(builder.call(fmax, [magnitude]), top)
        usable = builder.and_(builder.fcmp_ordered(">", scale, ir.Constant(F32, 0.0)), builder.not_(bad))
        inverse = builder.select(usable, builder.fdiv(ir.Constant(F32, 1.0), scale), ir.Constant(F32, 0.0))
        clean = builder.select(bad, ir.Constant(f32v, [0.0] * 32), v)
        codes = builder.fptosi(builder.call(rint, [builder.fmul(clean, _splat(builder, inverse, 32))]), i32v)
        codes = builder.call(
            smax, [builder.call(smin, [codes, ir.Constant(i32v, [127] * 32)]), ir.Constant(i32v, [-127] * 32)]
        )
        builder.store(
            builder.trunc(codes, _vec(I8, 32)),
            builder.bitcast(builder.gep(qx.data, [at]), _vec(I8, 32).as_pointer()),
            align=1,
        )
        total = builder.call(add, [codes])
        xscale = builder.select(bad, ir.Constant(F32, float("nan")), scale)
        builder.store(xscale, builder.gep(dx.data, [b]))
        builder.store(total, builder.gep(qsum.data, [b]))
        builder.store(builder.fmul(xscale, builder.sitofp(total, F32)), builder.gep(sx.data, [b]))
        return state

    _loop(builder, _int(0), blocks, [], block)
    return context.get_dummy_value()


# (x, qx, dx, qsum, sx): one row's whole blocks; the codes of a block with a nan or an
# infinity are 0 and its scale nan
quantize_blocks = _intrinsic(
    _quantize_codegen, [types.float32, types.int8, types.float32, types.int32, types.float32], types.void
)


def make_rows(how: str) -> tuple:
    """(q4_1_row, q4_0_row, q8_0_row) with byte products done the `how` way."""
    i8, u8, f32, i32 = types.int8, types.uint8, types.float32, types.int32
    u16 = types.uint16  # the blocks' scales and offsets, as the fp16 bits the file stores
    return (
        _intrinsic(_row_codegen("q4_1", how), [i8, f32, f32, u8, u16, u16]),  # qx, dx, sx, qs, d, m
        _intrinsic(_row_codegen("q4_0", how), [i8, f32, i32, u8, u16]),  # qx, dx, qsum, qs, d
        _intrinsic(_row_codegen("q8_0", how), [i8, f32, u8, u16]),  # qx, dx, qs, d
    )


q4_1_row, q4_0_row, q8_0_row = make_rows(host_int_dots())
