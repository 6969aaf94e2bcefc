"""What a served workload measured: latency percentiles per request, throughput, batch and
memory over time.

Per request: time to first token (TTFT: arrival to the end of the step that made its first
token), time per output token (TPOT: the rest of its tokens' time over their number, for
requests of two or more tokens), end-to-end latency (arrival to last token) and queueing
delay (arrival to getting a slot). Percentiles are numpy's linear interpolation.
Throughput is over the span from the first arrival to the last token.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 99)


def request_times(result) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT (NaN for one-token requests), end-to-end and queueing, in seconds."""
    arrival = np.array([r.request.arrival for r in result.requests])
    first = np.array([r.first_token for r in result.requests])
    last = np.array([r.finished for r in result.requests])
    admitted = np.array([r.admitted for r in result.requests])
    made = np.array([r.generated for r in result.requests], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(made > 1, (last - first) / (made - 1), np.nan)
    return {"ttft": first - arrival, "tpot": tpot, "e2e": last - arrival, "queue": admitted - arrival}


def stats(values: np.ndarray) -> dict[str, float | None]:
    """Mean, percentiles and max of the finite values; each None when there are none (TPOT when every
    request made one token): None prints as n/a and is JSON's null, where NaN is not JSON at all."""
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}, "max": None}
    out = {"mean": float(values.mean())}
    for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        out[f"p{q}"] = float(v)
    out["max"] = float(values.max())
    return out


def summarise(result) -> dict:
    times = request_times(result)
    steps = result.steps
    arrival = min(r.request.arrival for r in result.requests)
    end = max(r.finished for r in result.requests)
    span = max(end - arrival, 1e-30)
    tokens = sum(r.generated for r in result.requests)
    durations = np.asarray(steps.duration)
    running = np.asarray(steps.running)
    busy = float(durations.sum())
    kv_bytes = np.asarray(steps.kv_positions) * result.memory["kv_bytes_per_position"]
    return {
        "requests": len(result.requests),
        "scheduler": result.scheduler,
        "max_num_seqs": result.max_num_seqs,
        "chunk_size": result.chunk_size,
        "functional": result.functional,
        "model": result.model,
        "device": result.device,
        "span_s": float(span),
        "throughput_rps": len(result.requests) / span,
        "offered_rps": _offered(result),
        "output_tokens": int(tokens),
        # functional runs: requests an end-of-sequence token ended before their output length
        "stopped_at_eos": sum(1 for r in result.requests if r.stopped),
        "output_tokens_per_s": tokens / span,
        **{name: stats(v) for name, v in times.items()},
        "steps": len(steps),
        "busy_fraction": busy / span,
        # slots held, weighted by time: the batch the device ran on average
        "batch_mean": float((running * durations).sum() / busy) if busy else 0.0,
        "batch_max": int(running.max()) if len(running) else 0,
        "programs": dict(sorted(result.programs.items(), key=lambda kv: -kv[1])),
        "memory": {
            "core": result.memory["core"],
            "capacity": result.memory["capacity"],
            "allocated": result.memory["by_kind"],
            "kv_in_use_max": float(kv_bytes.max()) if len(kv_bytes) else 0.0,
            "kv_in_use_mean": float((kv_bytes * durations).sum() / busy) if busy else 0.0,
        },
    }


def _offered(result) -> float:
    """Arrivals per second over the arrival span (0 if they all arrive at once)."""
    arrivals = [r.request.arrival for r in result.requests]
    span = max(arrivals) - min(arrivals)
    return (len(arrivals) - 1) / span if span > 0 else 0.0
