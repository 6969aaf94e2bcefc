"""The requests of a served workload as a Chrome Trace Event Format file (Perfetto,
chrome://tracing): one lane per sequence slot with each request's prefill and decode, the
queue as async slices (a request waits on no slot), and counters of the slots held, the
queue and the KV cache in use. Timestamps are microseconds of simulated time.
"""

from __future__ import annotations

import json
from pathlib import Path

from tilesim.profiler.output import atomic

_US = 1e6
COUNTER_LIMIT = 20_000  # counter samples kept (evenly spaced over the steps)


def request_events(result) -> list[dict]:
    events: list[dict] = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "slots"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "queue"}},
        {"ph": "M", "pid": 3, "name": "process_name", "args": {"name": "server"}},
    ]
    for slot in range(result.max_num_seqs):
        events.append({"ph": "M", "pid": 1, "tid": slot, "name": "thread_name", "args": {"name": f"slot {slot}"}})
    for r in result.requests:
        rid, args = r.request.id, {"prompt_tokens": r.request.prompt_tokens, "output_tokens": r.generated}
        if r.admitted > r.request.arrival:
            events.append(
                {
                    "ph": "b",
                    "cat": "queue",
                    "id": rid,
                    "pid": 2,
                    "tid": 0,
                    "name": f"request {rid}",
                    "ts": r.request.arrival * _US,
                }
            )
            events.append(
                {
                    "ph": "e",
                    "cat": "queue",
                    "id": rid,
                    "pid": 2,
                    "tid": 0,
                    "name": f"request {rid}",
                    "ts": r.admitted * _US,
                }
            )
        for name, begin, end in (("prefill", r.admitted, r.first_token), ("decode", r.first_token, r.finished)):
            if end > begin:
                events.append(
                    {
                        "ph": "X",
                        "pid": 1,
                        "tid": r.slot,
                        "name": f"{name} {rid}",
                        "cat": name,
                        "ts": begin * _US,
                        "dur": (end - begin) * _US,
                        "args": args,
                    }
                )
    steps = result.steps
    stride = max(1, len(steps) // COUNTER_LIMIT)
    per_position = result.memory["kv_bytes_per_position"]
    for i in range(0, len(steps), stride):
        ts = (steps.start[i] + steps.duration[i]) * _US
        events.append(
            {
                "ph": "C",
                "pid": 3,
                "name": "requests",
                "ts": ts,
                "args": {"slots held": steps.running[i], "queued": steps.waiting[i]},
            }
        )
        events.append(
            {
                "ph": "C",
                "pid": 3,
                "name": "KV cache in use (bytes)",
                "ts": ts,
                "args": {f"core {result.memory['core']}": steps.kv_positions[i] * per_position},
            }
        )
    return events


def write_request_trace(result, path: str | Path) -> Path:
    path = Path(path)
    with atomic(path) as f:
        json.dump(
            {
                "traceEvents": request_events(result),
                "displayTimeUnit": "ms",
                "otherData": {"summary": result.summary()},
            },
            f,
        )
    return path
