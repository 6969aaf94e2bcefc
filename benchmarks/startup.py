"""Time to first token of a fresh process, load included, with a cold and a warm numba cache.

Each case runs in a subprocess (so nothing is cached in memory) and reports the wall time
from the interpreter's start to the first generated token. The cold case points numba at an
empty cache folder: the difference is compile time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from common import PROMPT_TEXT, machine

CHILD = """
import time
start = time.perf_counter()
import tilesim
from tilesim.models.checkpoint import open_checkpoint
from tilesim.runtime.model import Model
checkpoint = open_checkpoint("smollm2")
ids = checkpoint.tokenizer().encode({prompt!r})
model = Model(checkpoint, tilesim.Device("trn1", cores={tp}), {tp}, dtype={dtype!r})
model.generate([ids], max_new_tokens=1)
print(time.perf_counter() - start, model.wall["compile_s"])
"""


def first_token(tp: int, dtype: str, cache_dir: str | None) -> tuple[float, float, float]:
    env = dict(os.environ)
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(prompt=PROMPT_TEXT, tp=tp, dtype=dtype)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    wall = time.perf_counter() - t
    inside, compile_s = (float(x) for x in out.stdout.split())
    return wall, inside, compile_s


def main() -> None:
    print(f"# time to first token of a new process; {machine()}")
    print(f"{'case':28s} {'process wall':>13s} {'after imports':>14s} {'numba compile':>14s}")
    with tempfile.TemporaryDirectory() as cold:
        for label, cache in (("cold cache (compiles)", cold), ("warm cache", cold)):
            wall, inside, compile_s = first_token(1, "native", cache)
            print(f"{label + ', native tp1':28s} {wall:12.2f}s {inside:13.2f}s {compile_s:13.2f}s")
    for tp in (1, 3):
        for dtype in ("native", "fp32"):
            first_token(tp, dtype, None)  # warm the default cache
            wall, inside, compile_s = first_token(tp, dtype, None)
            print(f"{f'warm cache, {dtype} tp{tp}':28s} {wall:12.2f}s {inside:13.2f}s {compile_s:13.2f}s")


if __name__ == "__main__":
    main()
