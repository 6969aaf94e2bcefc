"""Numba kernels for what decoders need, each with a float64 numpy reference and a cost.

Every kernel writes into an `out` array it is given (memory is planned, not allocated on
the fly), accumulates in fp32, and is compiled with `cache=True`, so a second process does
not compile again. The references live in `reference.py`; the cost functions return a
`KernelCost` (FLOPs, and bytes by tensor kind) that `tilesim.device.cost` turns into time.

| module | kernels |
|---|---|
| matmul | linear (matrix-vector when M=1, matrix-matrix otherwise), optional bias |
| norms | layer_norm, rms_norm, add_norm (a residual add and the next norm) |
| activations | gelu_tanh, gelu_exact, silu, relu, silu_mul, softmax_rows |
| rotary | rope_neox, rope_gptj (in place, from cos/sin tables) |
| attention | attention (causal prefill and decode over the KV cache, grouped-query), kv_write |
| elementwise | embed (vocabulary-parallel gather), add, add_bias |
"""


def warm_up(int8_products: bool = False) -> None:
    """Compile (or load from numba's cache) every kernel for the array types the runtime uses;
    the int8-activation products (`q8_act`) only when asked, since few runs use them."""
    import numpy as np

    from tilesim.device.kernels import activations, attention, elementwise, matmul, norms, quant, rotary

    f32 = np.float32
    x, w = np.ones((2, 8), f32), np.ones((4, 8), f32)
    out = np.empty((2, 4), f32)
    matmul.linear(x, w, None, out)
    matmul.linear(x, w, np.ones(4, f32), out)
    y = np.empty_like(x)
    norms.rms_norm(x, x[0].copy(), 1e-5, y)
    norms.layer_norm(x, x[0].copy(), x[0].copy(), 1e-5, y)
    norms.add_norm(x, x, np.empty_like(x), x[0].copy(), None, 1e-5, y)
    for fn in activations.ACTIVATIONS.values():
        fn(x, y)
    activations.silu_mul(x, x, y)
    elementwise.add(x, x, y)
    elementwise.add_bias(y, x[0].copy())
    ids = np.zeros(2, np.int64)
    elementwise.embed(ids, w, 0, np.empty((2, 8), f32))
    cos, sin = rotary.rope_tables(4, rotary.rope_inv_freq(4, 10000.0))
    q = np.ones((2, 2, 4), f32)
    rotary.rope(q, ids, cos, sin, 4, "neox")
    rotary.rope(q, ids, cos, sin, 4, "gptj")
    start, valid = np.zeros(1, np.int64), np.ones(1, np.int64)
    q4 = np.ones((1, 2, 2, 4), f32)
    out4 = np.empty_like(q4)
    cache = np.zeros((1, 1, 4, 4), f32)
    attention.kv_write(q4[:, :, :1], q4[:, :, :1], cache, cache, start, valid)
    for fn in (attention._attention_serial, attention._attention_parallel):
        fn(q4, cache, cache, start, valid, np.float32(0.5), 0, np.zeros(2, f32), out4)
    scales = np.ones((1, 1, 4), f32)
    for codes in (np.zeros((1, 1, 4, 4), np.uint16), np.zeros((1, 1, 4, 4), np.uint8)):
        lut = quant.LUT_FP16 if codes.dtype == np.uint16 else quant.LUT_INT8
        attention.kv_write(
            codes[:, :1].transpose(0, 2, 1, 3).copy(),
            codes[:, :1].transpose(0, 2, 1, 3).copy(),
            codes,
            codes,
            start,
            valid,
        )
        for fn in (attention._codes_serial, attention._codes_parallel):
            fn(q4, codes, codes, lut, scales, scales, True, start, valid, np.float32(0.5), 0, np.zeros(2, f32), out4)
    attention._scale_write(np.ones((1, 1, 1), f32), np.ones((1, 1, 1), f32), scales, scales, start, valid)
    w32 = np.ones((4, 64), f32)
    x64, o4 = np.ones((2, 64), f32), np.empty((2, 4), f32)
    for fmt in ("fp16", "int8", "q4_1", "q4_0", "q8_0"):
        quant.linear(x64, quant.pack(w32, fmt), np.ones(4, f32), o4)
    # fp8 codes made by hand: packing fp8 would import ml_dtypes (~0.6 s) for every run
    fp8 = quant.Packed("fp8_e4m3", (4, 64), {"w": np.zeros((4, 64), np.uint8), "scale": np.ones(4, f32)})
    quant.linear(x64, fp8, np.ones(4, f32), o4)
    x8 = np.ones((8, 64), f32)  # enough rows for the kernels' prefill path
    for fmt in ("q4_1", "q8_0"):
        quant.linear(x8, quant.pack(w32, fmt), None, np.empty((8, 4), f32))
    for count in (2, 3):  # a layer's gate and up, its q, k and v: one launch over a tuple of weights
        quant.linear_group(x64, [quant.pack(w32, "q4_1")] * count, [None] * count, [np.empty((2, 4), f32)] * count)
    activations.round_bf16(y)
    if int8_products:
        for count in (1, 2, 3):
            ps = [quant.pack(w32, "q4_1")] * count
            quant.linear_group(x64, ps, [None] * count, [np.empty((2, 4), f32)] * count, "int8")
        for fmt in ("q4_0", "q8_0"):
            quant.linear(x64, quant.pack(w32, fmt), None, o4, "int8")
