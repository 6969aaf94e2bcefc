"""The latency and memory report of a run, computed from its `Trace` alone.

- time to first token (the prefill step, or a long prompt's windows), time per output token over the decode steps
  (mean, p50, p99), simulated tokens per second for the batch;
- where the time goes: per op type on the critical path, and per core compute,
  communication and waiting;
- utilisation: achieved FLOP/s over peak (MFU) and bytes/s over bandwidth (MBU), with the
  kernels that are compute-bound and memory-bound;
- memory per core (weights, KV cache, activations, peak, free) and per tile (max, mean, the
  fullest tiles and their tenants).
Every number comes from the same spans the trace file shows.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from tilesim.profiler.events import StepRecord, Trace


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def step_breakdown(step: StepRecord) -> dict[str, float]:
    """Seconds of the step's critical path per op type (they add up to its latency)."""
    out: dict[str, float] = defaultdict(float)
    for span in step.spans:
        if span.critical:
            out[span.op_type] += span.duration
    return dict(out)


def _summed(parts) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for part in parts:
        for key, seconds in part.items():
            out[key] += seconds
    return dict(out)


def core_breakdown(step: StepRecord, cores: int) -> list[dict[str, float]]:
    """Per core: seconds computing, communicating and waiting during the step."""
    rows = [{"compute": 0.0, "communication": 0.0, "waiting": 0.0} for _ in range(cores)]
    for span in step.spans:
        key = {"compute": "compute", "collective": "communication", "wait": "waiting"}.get(span.lane)
        if key:
            rows[span.core][key] += span.duration
    return rows


def build_report(trace: Trace) -> dict[str, Any]:
    prefill = [s for s in trace.steps if s.phase == "prefill"]
    decode = [s for s in trace.steps if s.phase == "decode"]
    total_time = sum(s.latency for s in trace.steps)
    new_tokens = sum(s.tokens for s in trace.steps)
    itl = [s.latency for s in decode]
    decode_time = sum(itl)
    report: dict[str, Any] = {
        "device": trace.device.get("name"),
        "cores": trace.device.get("cores"),
        "ttft_s": sum(s.latency for s in prefill),  # a long prompt's windows, one after another
        # None (n/a) when the run had no decode step: one new token comes from the prefill
        "itl_s": float(np.mean(itl)) if itl else None,
        "tpot_s": {
            "mean": float(np.mean(itl)) if itl else None,
            "p50": _percentile(itl, 50) if itl else None,
            "p99": _percentile(itl, 99) if itl else None,
        },
        "sim_tokens_per_s": new_tokens / total_time if total_time else 0.0,  # prefill included
        "sim_decode_tokens_per_s": sum(s.tokens for s in decode) / decode_time if decode_time else None,
        "sim_total_s": total_time,
        "steps": len(trace.steps),
    }
    if prefill:
        report["prefill_breakdown_s"] = _summed(step_breakdown(s) for s in prefill)
    if decode:
        report["decode_breakdown_s"] = step_breakdown(decode[-1])
        report["decode_cores"] = core_breakdown(decode[-1], trace.device.get("cores", 1))
    if "buckets" in trace.model:
        report["buckets"] = buckets_used(trace)
    pipe = trace.model.get("pipeline")
    if pipe and pipe["pp"] > 1:
        report["pipeline"] = pipeline_report(trace, pipe, decode[-1] if decode else prefill[0] if prefill else None)
    report["utilisation"] = utilisation(trace)
    if "precision" in trace.model:
        report["precision"] = trace.model["precision"]
    if trace.memory is not None:
        report["memory"] = memory_report(trace)
    if trace.model.get("staged_rows") is not None:  # the most token rows a step keeps its activations on chip for
        report["staged_rows"] = trace.model["staged_rows"]
    return report


def pipeline_report(trace: Trace, pipe: dict, step: StepRecord | None) -> dict[str, Any]:
    """The stages, and of one step (the last decode step) how long each stage's cores were
    busy and the bubble: the fraction of the step a stage's cores wait, on average (1 - 1/pp
    when the stages run in turn; less when micro-batches overlap them)."""
    out = {**pipe}
    if step is None or not step.latency:
        return out
    if pipe["micro_batches"] > 1 and "batch" in step.shape:  # at most one a sequence: fewer than asked
        out["micro_batches_run"] = min(pipe["micro_batches"], step.shape["batch"])
    tp = trace.device.get("cores", 1) // pipe["pp"]
    busy = []
    for stage in range(pipe["pp"]):
        core = stage * tp  # the stage's first core: its lanes run alike
        windows = sorted((s.start, s.end) for s in step.spans if s.core == core and s.lane in ("compute", "collective"))
        total, reach = 0.0, -1.0
        for start, end in windows:  # the union of the core's busy spans
            if end > reach:
                total += end - max(start, reach)
                reach = end
        busy.append(total)
    out["stage_busy_s"] = busy
    out["bubble_fraction"] = 1.0 - sum(busy) / (len(busy) * step.latency)
    return out


def bucket_of(step: StepRecord) -> int:
    """The compiled bucket a step ran in: its prompt length (prefill) or KV length (decode)."""
    return step.shape["tokens"] if step.phase == "prefill" else step.shape["context"]


def step_names(steps: list[StepRecord]) -> list[str]:
    """What traces and plots call each step: "prefill" ("prefill k/N" for the windows of a
    prompt longer than the largest prefill bucket) or "decode i"."""
    windows = sum(step.phase == "prefill" for step in steps)
    names, window = [], 0
    for step in steps:
        if step.phase != "prefill":
            names.append(f"decode {step.index}")
            continue
        window += 1
        names.append(f"prefill {window}/{windows}" if windows > 1 else "prefill")
    return names


def buckets_used(trace: Trace) -> dict[str, Any]:
    """The compiled buckets, and how many steps ran in each."""
    used: dict[str, int] = {}
    for step in trace.steps:
        key = f"{step.phase} {bucket_of(step)}"
        used[key] = used.get(key, 0) + 1
    return {**trace.model["buckets"], "steps": used}


def utilisation(trace: Trace) -> dict[str, Any]:
    """MFU (against the peak of the run's compute dtype) and MBU over the whole run, and the
    kernels, cumulative over the run and per phase, each with the bound that dominates its
    time (compute or memory, summed over its calls)."""
    cores = trace.device.get("cores", 1)
    peak = trace.device.get("peak_flops", 0.0)
    bandwidth = trace.device.get("memory_bandwidth", 0.0)
    flops = bytes_ = 0.0
    kernels: dict[str, dict[str, Any]] = {}
    phases: dict[str, dict[str, dict[str, Any]]] = {}
    for spans, count, phase in _shared_spans(trace):
        for span in spans:
            if span.lane != "compute":
                continue
            flops += span.flops * count
            bytes_ += span.bytes * count
            for table in (kernels, phases.setdefault(phase, {})):
                entry = table.setdefault(
                    span.name, {"time_s": 0.0, "flops": 0.0, "bytes": 0.0, "compute_s": 0.0, "memory_s": 0.0}
                )
                entry["time_s"] += span.duration / cores * count
                entry["flops"] += span.flops * count
                entry["bytes"] += span.bytes * count
                entry["compute_s"] += span.compute_s * count
                entry["memory_s"] += span.memory_s * count
    for table in (kernels, *phases.values()):
        for entry in table.values():
            entry["bound"] = "compute" if entry["compute_s"] > entry["memory_s"] else "memory"
    total = trace.end
    mfu = flops / (total * peak * cores) if total and peak else 0.0
    mbu = bytes_ / (total * bandwidth * cores) if total and bandwidth else 0.0
    top = sorted(kernels.items(), key=lambda kv: -kv[1]["time_s"])[:TOP_KERNELS]
    return {
        "mfu": mfu,
        "mfu_peak": {"dtype": trace.model.get("compute_dtype"), "flops_per_core": peak},
        "mbu": mbu,
        "kernels": dict(top),  # cumulative over the run, the TOP_KERNELS longest
        "kernels_shown": f"{len(top)} of {len(kernels)}, cumulative over the run",
        "kernels_by_phase": phases,  # every kernel, per phase
    }


TOP_KERNELS = 8


def _shared_spans(trace: Trace) -> list[tuple[list, int, str]]:
    """Each distinct list of spans (steps of one shape share one), how many steps share it, and their phase."""
    groups: dict[int, list] = {}
    for step in trace.steps:
        entry = groups.setdefault(id(step.spans), [step.spans, 0, step.phase])
        entry[1] += 1
    return [tuple(entry) for entry in groups.values()]


def memory_report(trace: Trace) -> dict[str, Any]:
    mem = trace.memory
    per_core = []
    for core, kinds in enumerate(mem.per_core):
        used = {region: 0 for region in mem.capacity}
        for kind, nbytes in kinds.items():
            used[mem.regions[kind]] += nbytes
        per_core.append(
            {
                **kinds,
                "peak": mem.peak[core],
                "free": {region: mem.capacity[region] - used[region] for region in mem.capacity},
            }
        )
    tiles = np.array(mem.tile_usage, dtype=np.int64) if mem.tile_usage else np.zeros((0, 0))
    tensors = ("weights", "kv_cache", "recurrent_state", "activations")
    reserved = {k: v for k, v in mem.per_core[0].items() if k not in tensors} if mem.per_core else {}
    weights_kv = sum(kinds.get("weights", 0) + kinds.get("kv_cache", 0) for kinds in mem.per_core)
    return {
        # the device runtime's own memory on each core (model code, DMA rings...: the preset's `reserved`)
        "reserved": reserved,
        # transformers-neuronx's sizing rule: weights and KV cache within the cores' off-chip memory
        "sizing_rule": {
            "weights_and_kv_bytes": weights_kv,
            "capacity_bytes": mem.capacity["offchip"] * len(mem.per_core),
        },
        "per_core_peak_bytes": list(mem.peak),
        "max_tile_bytes": int(tiles.max()) if tiles.size else 0,
        "mean_tile_bytes": float(tiles.mean()) if tiles.size else 0.0,
        "tile_bytes": mem.tile_bytes,
        "regions": dict(mem.regions),
        "capacity": dict(mem.capacity),
        "per_core": per_core,
        "fullest_tiles": [
            {"core": core, "tile": tile, "tenants": [{"name": n, "bytes": b} for n, b in tenants]}
            for core, rows in enumerate(mem.tenants)
            for tile, tenants in rows[:1]
        ],
        "notes": list(mem.notes),
    }
