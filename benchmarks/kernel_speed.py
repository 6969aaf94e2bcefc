"""Matrix-vector products of every weight format against numpy's fp32 product, alternating.

For SmolLM2's shapes, each format's `quant.linear` (one x row, the decode case) against
`x @ w.T` with numpy (BLAS) on the same weights decoded to fp32. "cold" cycles through
enough copies of the weights to exceed the last-level cache, as a decode step does; "hot"
repeats one copy. Reports G weights/s and the ratio to numpy in the same setting.
`q4_1:int8` and the like are the block formats with x quantized to int8 (`--act-dtype int8`).
"""

from __future__ import annotations

import time

import numpy as np
from common import machine
from numba import get_num_threads

from tilesim.device.kernels import quant, warm_up

SHAPES = [(576, 576), (1536, 576), (576, 1536), (49152, 576)]
FORMATS = ["fp32", "fp16", "bf16", "fp8_e4m3", "int8", "q8_0", "q4_1", "q4_0", "q8_0:int8", "q4_1:int8", "q4_0:int8"]
CACHE_BYTES = 64 << 20  # cycle through more than this many bytes for "cold"
ROUNDS = 5


def best_rate(run, copies: int, weights: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for i in range(copies):
            run(i)
        best = min(best, (time.perf_counter() - t) / copies)
    return weights / best / 1e9


def measure(spec: str, w: np.ndarray, x: np.ndarray) -> dict[str, float]:
    fmt, _, act = spec.partition(":")
    act = act or "fp32"
    n, k = w.shape
    out = np.empty((1, n), np.float32)
    packed = quant.pack(w, fmt)
    dense = quant.unpack(packed)
    copies = max(2, CACHE_BYTES // max(packed.nbytes, 1) + 1)
    packs = [quant.Packed(fmt, packed.shape, {a: v.copy() for a, v in packed.arrays.items()}) for _ in range(copies)]
    dense_copies = max(2, CACHE_BYTES // dense.nbytes + 1)
    denses = [dense.copy() for _ in range(dense_copies)]
    reps = max(3, 20_000_000 // (n * k))
    rates: dict[str, float] = {}
    for _ in range(2):  # alternate tilesim and numpy, hot then cold
        rates["hot"] = best_rate(lambda i: quant.linear(x, packed, None, out, act), reps, n * k)
        rates["hot numpy"] = best_rate(lambda i: np.dot(x, dense.T, out=out), reps, n * k)
        rates["cold"] = best_rate(lambda i: quant.linear(x, packs[i], None, out, act), copies, n * k)
        rates["cold numpy"] = best_rate(lambda i: np.dot(x, denses[i].T, out=out), dense_copies, n * k)
    return rates


def main() -> None:
    warm_up(int8_products=True)
    rng = np.random.default_rng(0)
    print(f"# one-row products, G weights/s (best of {ROUNDS}); {machine()}; numba threads {get_num_threads()}")
    head = ("format", "shape", "hot", "numpy", "ratio", "cold", "numpy", "ratio")
    print("{:10s} {:>11s} {:>7s} {:>7s} {:>6s} {:>7s} {:>7s} {:>6s}".format(*head))
    for n, k in SHAPES:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        x = rng.standard_normal((1, k)).astype(np.float32)
        for fmt in FORMATS:
            r = measure(fmt, w, x)
            print(
                f"{fmt:10s} {f'{n}x{k}':>11s} {r['hot']:7.1f} {r['hot numpy']:7.1f} {r['hot'] / r['hot numpy']:5.2f}x "
                f"{r['cold']:7.1f} {r['cold numpy']:7.1f} {r['cold'] / r['cold numpy']:5.2f}x"
            )


if __name__ == "__main__":
    main()
