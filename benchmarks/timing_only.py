"""Timing-only simulation: Llama-2-70B on trn1 at TP 32 from its config alone, and how the
cost of simulating one decode step grows with layers x cores.

The whole run (load the config, plan memory, time the prefill of 256 tokens and 16 decode
steps) is timed as wall clock. Then, for several layer counts and core counts, a decode step
shape is timed from scratch, best of three (collective simulations cached once per size, as
in a run); the last column, microseconds per layer-core, stays flat when the cost grows
linearly.
"""

from __future__ import annotations

import dataclasses
import time

from common import machine

import tilesim
from tilesim.models.decoder import build_graph
from tilesim.models.named import open_for_timing
from tilesim.runtime.timing import StepShape


def whole_run() -> float:
    t = time.perf_counter()
    checkpoint = open_for_timing("llama-2-70b")
    model = tilesim.load(
        checkpoint, tilesim.Device("trn1", cores=32, backed=False), 32, timing_only=True, max_context=512
    )
    out = model.generate([[0] * 256], max_new_tokens=16, eos_token_id=None)
    wall = time.perf_counter() - t
    r = out.report
    print(
        f"llama-2-70b, trn1, tp 32, prompt 256, 16 new tokens: {wall:.2f} s wall; simulated TTFT "
        f"{r['ttft_s'] * 1e3:.1f} ms, per token {r['itl_s'] * 1e3:.2f} ms, "
        f"{max(r['memory']['per_core_peak_bytes']) / 2**30:.2f} GiB per core"
    )
    return wall


def scaling() -> None:
    base = open_for_timing("llama-2-70b")
    print(f"{'layers':>6s} {'cores':>5s} {'step wall (ms)':>15s} {'us per layer-core':>18s}")
    for layers in (20, 40, 80):
        config = dataclasses.replace(base.config, layers=layers)
        checkpoint = dataclasses.replace(base, config=config, graph=build_graph(config))
        for cores in (8, 16, 32):
            try:
                device = tilesim.Device("trn1", cores=cores, backed=False)
                model = tilesim.load(checkpoint, device, cores, dtype="fp16", timing_only=True, max_context=512)
            except tilesim.OutOfMemory:
                print(f"{layers:6d} {cores:5d} {'does not fit':>15s}")
                continue
            shape = StepShape("decode", 1, 1, 512, "argmax")
            model.timer.time(dataclasses.replace(shape, context=256))  # simulate the collectives once
            best = float("inf")
            for _ in range(3):  # best of three: the machine's noise only ever adds time
                model.timer._cache.pop(shape, None)
                t = time.perf_counter()
                model.timer.time(shape)
                best = min(best, time.perf_counter() - t)
            ms = best * 1e3
            print(f"{layers:6d} {cores:5d} {ms:15.1f} {ms * 1e3 / (layers * cores):18.2f}")


def main() -> None:
    print(f"# timing-only mode; {machine()}")
    whole_run()
    scaling()


if __name__ == "__main__":
    main()
