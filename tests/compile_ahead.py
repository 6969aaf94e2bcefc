"""Compile, into numba's on-disk cache, the kernels the suite needs beyond a tiny model's
first run, in a process of its own beside the suite (tests/conftest.py starts it).

In a fresh clone numba compiles every kernel the first time a test calls it: about four
minutes of a 13-minute suite on 2 cores, all in the one pytest process while the other core
idles. The suite's first tests load tiny models (the kernels of `kernels.warm_up`); this
process meanwhile compiles what later tests run: the many-core paths of SmolLM2's Q4_1 and
Q8_0 blocks at TP 1 and 3, the int8-activation products, then the rest of `warm_up`. A test
that reaches a kernel this process has cached loads it; one that gets there first compiles
it itself, as it would without this process. The machine code is the same whoever compiles
it (docs/numerics.md), so what the tests compute does not depend on it.

    python tests/compile_ahead.py
"""

from __future__ import annotations

import os
import time
import warnings


def main() -> None:
    if hasattr(os, "nice"):
        os.nice(10)  # the tests come first
    warnings.simplefilter("ignore")  # the runs below are not checked here: the tests check them
    started = time.perf_counter()
    import tilesim
    from tilesim.device import kernels

    for tp, dtype, act in ((1, None, None), (3, None, None), (1, "int4", "int8")):
        model = tilesim.load("smollm2", device="trn1", tp=tp, dtype=dtype, act_dtype=act, max_context=64)
        try:
            model.generate([[1, 2, 3], [4, 5]], max_new_tokens=3)
        finally:
            model.close()
        print(f"smollm2 at TP {tp} ({dtype or 'as stored'}): {time.perf_counter() - started:.1f} s", flush=True)
    kernels.warm_up(int8_products=True)
    print(f"all compiled: {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
