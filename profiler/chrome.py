"""Export a `Trace` in the Chrome Trace Event Format (JSON), which Perfetto's UI and
chrome://tracing open.

- one process per core (`core N`), plus process 0 with a lane of steps (prefill, decode 1, ...);
- lanes (threads) per core: `compute` (one slice per kernel), `memory` (each kernel's memory
  traffic, with its bytes), `collective` (collectives with their algorithm and size, and the
  time spent waiting for them), and one lane per outgoing link for fabric messages;
- flow arrows from each message's send (on the sender's link lane) to its arrival (on the
  receiver's collective lane); fabric messages are kept for the prefill and the first
  decode step, which every later step of the same shape repeats;
- counters of memory in use per core: weights, KV cache and live activations.
A long run's kernels would make a trace no viewer opens (a decode step of Llama-2-7b on 32
cores is some 50,000 events, 7 MB of JSON): the steps lane has every step, and the
kernels, collectives and messages are kept for the first steps while the trace stays within
`MAX_EVENTS`, then for the first step of each compiled shape only (later steps of a shape
repeat its kernels, shifted in time). `detailed` says which; the file is written as it goes.
Timestamps are microseconds of simulated device time; the emulator's own wall-clock times
are in `otherData.wall`, apart.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tilesim.errors import ConfigError
from tilesim.profiler.events import Trace
from tilesim.profiler.output import atomic, writable_file
from tilesim.profiler.report import bucket_of, step_names
from tilesim.runtime.checks import whole

COMPUTE, MEMORY, COLLECTIVE, SUPERSTEPS = 1, 2, 3, 4
_US = 1e6
MAX_EVENTS = 2_000_000  # about 300 MB of JSON, which Perfetto's UI opens; 1000 steps of a 7B model are 50 million


def detailed(trace: Trace, max_events: int | None = MAX_EVENTS) -> list[bool]:
    """Per step, whether the trace holds its kernels, collectives and messages: every step
    while the events stay within `max_events` (None: no limit), then the first step of each
    compiled shape (steps of one shape share their spans)."""
    whole("max_events", max_events, 0, ConfigError, optional=True, maximum=None)
    within, total, spans_events, out = True, 0, {}, []
    for step in trace.steps:
        first = id(step.spans) not in spans_events
        if first:
            spans_events[id(step.spans)] = sum(map(_span_events, step.spans))
        messages = sum(len(collective.messages) for collective in step.messages)
        events = spans_events[id(step.spans)] + 3 * messages  # a message: a slice and a flow's two ends
        within = within and (max_events is None or total + events <= max_events)
        keep = within or first
        total += events if keep else 1
        out.append(keep)
    return out


def _span_events(span) -> int:
    """How many events `_step_events` makes of a span (a kernel: its slice, its traffic, and
    on a bulk-synchronous device its supersteps' phases; the memory counters aside)."""
    if span.lane != "compute":
        return 1
    phases = len(_supersteps(0, span)) if span.sync_s or span.exchange_s else 0
    return 1 + (span.memory_s > 0) + phases


def _meta(pid: int, tid: int | None, kind: str, value: Any) -> dict:
    event = {"ph": "M", "pid": pid, "name": kind, "args": {"name" if "name" in kind else "sort_index": value}}
    if tid is not None:
        event["tid"] = tid
    return event


def chrome_events(trace: Trace, max_events: int | None = MAX_EVENTS) -> Iterator[dict]:
    """The trace's records as Trace Event Format events, step by step (`detailed` says
    which steps have more than their slice on the steps lane)."""
    return _events(trace, detailed(trace, max_events))


def _events(trace: Trace, kept: list[bool]) -> Iterator[dict]:
    """`chrome_events`, with the kernels of the steps `kept` says."""
    cores = trace.device.get("cores", 1)
    yield from _lanes(trace, cores)
    # per core, the live activation bytes at each node (the first record of a node counts)
    live = [_first_of_each(points) for points in trace.memory.live_activations] if trace.memory else []
    fixed = (
        [{k: v for k, v in kinds.items() if k != "activations"} for kinds in trace.memory.per_core]
        if trace.memory
        else []
    )
    link_tids: dict[tuple[int, str], int] = {}
    flows = itertools.count(1)
    for step, name, detail in zip(trace.steps, step_names(trace.steps), kept, strict=True):
        yield {
            "ph": "X",
            "pid": 0,
            "tid": 0,
            "name": name,
            "ts": step.start * _US,
            "dur": step.latency * _US,
            "cat": "step",
            "args": {**step.shape, "tokens": step.tokens, "bucket": bucket_of(step), "kernels": detail},
        }
        if detail:
            yield from _step_events(step, trace, live, fixed, link_tids, flows)


def _lanes(trace: Trace, cores: int) -> list[dict]:
    """The names and order of the processes (steps, then one per core) and their lanes."""
    events: list[dict] = [
        _meta(0, None, "process_name", f"{trace.device.get('name')}: steps"),
        _meta(0, None, "process_sort_index", 0),
        _meta(0, 0, "thread_name", "steps"),
    ]
    for core in range(cores):
        pid = core + 1
        events += [_meta(pid, None, "process_name", f"core {core}"), _meta(pid, None, "process_sort_index", pid)]
        lanes = [(COMPUTE, "compute"), (MEMORY, "memory"), (COLLECTIVE, "collective")]
        if trace.device.get("bulk_synchronous"):
            lanes.append((SUPERSTEPS, "supersteps"))
        for tid, lane in lanes:
            events += [_meta(pid, tid, "thread_name", lane), _meta(pid, tid, "thread_sort_index", tid)]
    return events


def _step_events(step, trace: Trace, live: list, fixed: list, link_tids: dict, flows: Iterator[int]) -> list[dict]:
    """One step's kernels, memory traffic and counters, collectives, and fabric messages.
    `link_tids` (a lane per link) and `flows` (the arrows' ids) carry over between steps."""
    events: list[dict] = []
    counters_at = {}
    for span in step.spans:  # shared by the steps of a shape: their times are the step's plus theirs
        pid = span.core + 1
        start = step.start + span.start
        ts, dur = start * _US, span.duration * _US
        if span.lane == "compute":
            args = {
                "op_type": span.op_type,
                "layer": span.layer,
                "flops": span.flops,
                "bytes": span.bytes,
                "bound": span.bound,
                "critical": span.critical,
            }
            events.append(
                {
                    "ph": "X",
                    "pid": pid,
                    "tid": COMPUTE,
                    "name": span.name,
                    "ts": ts,
                    "dur": dur,
                    "cat": span.op_type,
                    "args": args,
                }
            )
            if span.memory_s > 0:
                events.append(
                    {
                        "ph": "X",
                        "pid": pid,
                        "tid": MEMORY,
                        "name": f"{span.name} traffic",
                        "ts": (start + span.overhead_s) * _US,
                        "dur": span.memory_s * _US,
                        "cat": "memory",
                        "args": {"bytes": span.bytes},
                    }
                )
            if span.sync_s or span.exchange_s:
                events += _supersteps(pid, span, step.start)
            if step.index < 2 and live and span.core not in counters_at.get(span.node, ()):
                counters_at.setdefault(span.node, set()).add(span.core)
                events.append(_memory_counter(pid, ts, fixed[span.core], live[span.core].get(span.node, 0)))
        elif span.lane == "collective":
            label = f"{span.name} ({span.algo}, {int(span.bytes)} B)"
            events.append(
                {
                    "ph": "X",
                    "pid": pid,
                    "tid": COLLECTIVE,
                    "name": label,
                    "ts": ts,
                    "dur": dur,
                    "cat": "collective",
                    "args": {"algo": span.algo, "bytes": span.bytes},
                }
            )
        else:  # waiting for a collective, or the host's part of the step (on the compute lane)
            host = span.lane == "host"
            events.append(
                {
                    "ph": "X",
                    "pid": pid,
                    "tid": COMPUTE if host else COLLECTIVE,
                    "name": span.name,
                    "ts": ts,
                    "dur": dur,
                    "cat": "host" if host else "wait",
                    "args": {},
                }
            )
    if fixed:
        for core in range(trace.device.get("cores", 1)):
            activations = trace.memory.per_core[core].get("activations", 0)
            events.append(_memory_counter(core + 1, step.start * _US, fixed[core], activations))
    for move, busy_until in _on_links(step.transfers):
        key = (move.src, move.link)
        if key not in link_tids:
            link_tids[key] = 10 + len([k for k in link_tids if k[0] == move.src])
            events.append(_meta(move.src + 1, link_tids[key], "thread_name", f"link {move.link}"))
            events.append(_meta(move.src + 1, link_tids[key], "thread_sort_index", link_tids[key]))
        tid = link_tids[key]
        start, end = (step.start + move.start) * _US, (step.start + move.end) * _US
        events.append(
            {
                "ph": "X",
                "pid": move.src + 1,
                "tid": tid,
                "name": f"{move.src}->{move.dst} {move.nbytes} B",
                "ts": start,
                "dur": (step.start + busy_until) * _US - start,
                "cat": "transfer",
                "args": {"bytes": move.nbytes, "arrives_us": end},
            }
        )
        flow = next(flows)
        events.append(
            {
                "ph": "s",
                "id": flow,
                "pid": move.src + 1,
                "tid": tid,
                "ts": start,
                "name": "message",
                "cat": "transfer",
            }
        )
        events.append(
            {
                "ph": "f",
                "bp": "e",
                "id": flow,
                "pid": move.dst + 1,
                "tid": COLLECTIVE,
                "ts": end,
                "name": "message",
                "cat": "transfer",
            }
        )
    return events


def _on_links(transfers) -> list[tuple]:
    """Each message with the end of its slice on its link's lane: its arrival, or the start
    of the next message on that link if that comes first. A link streams the next message
    while the last is still on its way (its hop latency), and one lane's slices must not
    overlap (Perfetto drops slices that are not nested); the flow arrow marks the arrival."""
    by_lane: dict[tuple, list] = {}
    for move in transfers:
        by_lane.setdefault((move.src, move.link), []).append(move)
    out = []
    for moves in by_lane.values():
        moves.sort(key=lambda m: (m.start, m.end))
        for move, after in zip(moves, [*moves[1:], None], strict=True):
            out.append((move, move.end if after is None else max(move.start, min(move.end, after.start))))
    return sorted(out, key=lambda pair: (pair[0].start, pair[0].src))


def _first_of_each(points: list[tuple[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for index, nbytes in points:
        out.setdefault(index, nbytes)
    return out


def _memory_counter(pid: int, ts: float, fixed: dict[str, int], activations: int) -> dict:
    args = {"weights": fixed.get("weights", 0), "kv_cache": fixed.get("kv_cache", 0), "activations": activations}
    if "recurrent_state" in fixed:
        args["recurrent_state"] = fixed["recurrent_state"]
    return {"ph": "C", "pid": pid, "name": "memory in use (bytes)", "ts": ts, "args": args}


def write_chrome_trace(trace: Trace, path: str | Path, max_events: int | None = MAX_EVENTS) -> Path:
    """Write the trace as JSON to `path` (folders are made as needed), atomically, event by
    event (a long run's list of events would not fit in memory). The trace holds simulated
    time only, so reruns write the same bytes; host wall times are in `Trace.wall` (the
    command line's --json), not here. `max_events`: see `detailed` (None: every step's kernels)."""
    path = writable_file(path, "trace")
    kept = detailed(trace, max_events)
    other = {
        "clock": "simulated device time, microseconds",
        "device": trace.device.get("name"),
        "model": trace.model,
        "steps_with_kernels": sum(kept),
        "steps": len(kept),
    }
    encoder = json.JSONEncoder(separators=(",", ":"), default=float)
    events = _events(trace, kept)
    with atomic(path) as f:
        f.write('{"traceEvents":[')
        # a few thousand events per call of the C encoder: one call per event was 14 us each,
        # most of writing a trace of two million; "[a,b]" less its brackets is "a,b"
        separator = ""
        while chunk := list(itertools.islice(events, 4096)):
            f.write(separator + encoder.encode(chunk)[1:-1])
            separator = ","
        f.write('],"displayTimeUnit":"ns","otherData":' + encoder.encode(other) + "}")
    return path


def _supersteps(pid: int, span, offset: float = 0.0) -> list[dict]:
    """A bulk-synchronous kernel's three phases, as PopVision's execution trace shows them
    (`offset`: the start of the step the span's times are relative to)."""
    compute = span.duration - span.sync_s - span.exchange_s
    begin = offset + span.start
    phases = (("compute", begin, compute), ("sync", begin + compute, span.sync_s),
              ("exchange", begin + compute + span.sync_s, span.exchange_s))  # fmt: skip
    return [
        {"ph": "X", "pid": pid, "tid": SUPERSTEPS, "name": f"{span.name} {phase}", "ts": start * _US,
         "dur": seconds * _US, "cat": f"superstep {phase}", "args": {"kernel": span.name}}
        for phase, start, seconds in phases if seconds > 0
    ]  # fmt: skip
