"""Numba kernels for what decoders need, each with a float64 numpy reference and a cost.

Every kernel writes into an `out` array it is given (memory is planned, not allocated on
the fly), accumulates in fp32, and is compiled with `cache=True`, so a second process does
not compile again. The references live in `reference.py`; the cost functions return a
`KernelCost` (FLOPs, and bytes by tensor kind) that `tilesim.device.cost` turns into time.

| module | kernels |
|---|---|
| matmul | linear (matrix-vector when M=1, matrix-matrix otherwise), optional bias |
| norms | layer_norm, rms_norm |
| activations | gelu_tanh, gelu_exact, silu, relu, silu_mul, softmax_rows |
| rotary | rope_neox, rope_gptj (in place, from cos/sin tables) |
| attention | attention (causal prefill and decode over the KV cache, grouped-query), kv_write |
| elementwise | embed (vocabulary-parallel gather), add, add_bias |
"""
