"""Request-level simulation speed: Llama-2-70B on trn1.32xlarge at TP 32, continuous
batching over 32 slots, prompts and outputs of 100 to 500 tokens, Poisson arrivals at 2
requests/s, for 1,000 to 10,000 requests.

Beside tilesim's server (`tilesim.serving.serve`, timing-only) runs a bare reference: the
same continuous-batching policy as a minimal loop over the same step times (looked up from
tilesim's timer beforehand), with no scheduler interface, checks, logs or metrics. They
alternate, best of three each; the ratio is what the server's generality costs per step.
Both must end the run at the same simulated time (checked: `same end`). Microseconds per
simulated step stay flat when the cost is linear.
Loading and timing each compiled shape the first time is reported apart (`first`).
"""

from __future__ import annotations

import time

from common import machine

import tilesim
from tilesim.serving import serve, synthetic

SLOTS = 32


def bare_loop(requests, prefill_s, decode_s) -> float:
    """Continuous batching, prefill first, as plainly as it can be written: the end time."""
    clock, i, waiting, running = 0.0, 0, [], []  # running: [context, left]
    n = len(requests)
    while i < n or waiting or running:
        while i < n and requests[i].arrival <= clock:
            waiting.append(requests[i])
            i += 1
        if waiting and len(running) < SLOTS:
            while waiting and len(running) < SLOTS:
                r = waiting.pop(0)
                clock += prefill_s(r.prompt_tokens)
                running.append([r.prompt_tokens + 1, r.output_tokens - 1])
            running = [s for s in running if s[1] > 0]
            continue
        if not running:
            clock = requests[i].arrival
            continue
        clock += decode_s(max(s[0] for s in running))
        for s in running:
            s[0] += 1
            s[1] -= 1
        running = [s for s in running if s[1] > 0]
    return clock


def main() -> None:
    print(f"# serving.py: {machine()}")
    t = time.perf_counter()
    model = tilesim.load("llama-2-70b", device="trn1.32xlarge", tp=32, dtype="bf16", timing_only=True,
                         pad_heads=True, max_context=1024)  # fmt: skip
    warm = serve(model, synthetic(200, 2.0, prompt="uniform:100,500", output="uniform:100,500"), max_num_seqs=SLOTS)
    print(f"first: load and time every compiled shape once: {time.perf_counter() - t:.2f} s "
          f"({len(warm.programs)} programs)")  # fmt: skip
    b, timer = model.buckets, model.timer
    prefill = {n: timer.time(b.prefill_shape(1, n)).latency for n in range(1, 1025)}
    decode = {c: timer.time(b.decode_shape(SLOTS, c)).latency for c in range(1, 1025)}
    print("requests  simulated steps  tilesim s  bare loop s  ratio  us/step (tilesim)  simulated span  same end")
    for n in (1000, 2000, 5000, 10000):
        requests = synthetic(n, 2.0, prompt="uniform:100,500", output="uniform:100,500", seed=1)
        ours, bare = [], []
        for _ in range(3):
            t = time.perf_counter()
            result = serve(model, requests, max_num_seqs=SLOTS)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            end = bare_loop(requests, prefill.__getitem__, decode.__getitem__)
            bare.append(time.perf_counter() - t)
        steps = len(result.steps)
        span = result.summary()["span_s"]
        same = abs(max(r.finished for r in result.requests) - end) <= 1e-9 * end
        print(f"{n:8d}  {steps:15d}  {min(ours):9.2f}  {min(bare):11.2f}  {min(ours) / min(bare):5.1f}  "
              f"{min(ours) / steps * 1e6:17.1f}  {span:12.0f} s  {'yes' if same else 'NO'}")  # fmt: skip


if __name__ == "__main__":
    main()
