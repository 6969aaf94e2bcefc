"""Helpers shared by the benchmarks: the machine, the SmolLM2 prompt, timing a decode, alternating
the runners, and llama.cpp where it runs."""

from __future__ import annotations

import os
import platform
import time

import numpy as np

PROMPT_TEXT = "The three most important inventions of the nineteenth century were"
NEW_TOKENS = 64


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s a parallel numba sum reads from an array bigger than the caches (best of `repeats`)."""
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def total(a):
        s = np.float32(0.0)
        for i in prange(a.shape[0]):
            s += a[i]
        return s

    a = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    total(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        total(a)
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best


def alternate(runners: dict, measure, rounds: int) -> dict[str, list[float]]:
    """`measure(run)` of every runner, round after round: drift of the machine hits every side alike."""
    results: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            results[name].append(measure(run))
    return results


LLAMA_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
for i, _ in enumerate(llm.generate([1, 2, 3], top_k=1, temp=0.0)):
    if i >= 2:
        break
"""


def llama_cpp(model_path: str):
    """llama-cpp-python's `Llama`, or None (saying why) when it is not installed or crashes
    here: a build for another ISA dies of SIGILL or SIGSEGV, so it is tried in a child first."""
    import subprocess
    import sys

    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: not installed (make bench-llamacpp builds it)")
        return None
    probe = subprocess.run([sys.executable, "-c", LLAMA_PROBE, model_path], capture_output=True, text=True)
    if probe.returncode != 0:
        how = f"signal {-probe.returncode}" if probe.returncode < 0 else f"exit status {probe.returncode}"
        print(f"llama.cpp: crashed on this host ({how}); rebuild it portably: ", end="")
        print("rm .venv/.llamacpp-portable; make bench-llamacpp")
        return None
    return Llama


def median(values: list[float]) -> float:
    return float(np.median(values))
