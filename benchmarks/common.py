"""Helpers shared by the benchmarks: the machine, the SmolLM2 prompt, and timing a decode."""

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


def median(values: list[float]) -> float:
    return float(np.median(values))
