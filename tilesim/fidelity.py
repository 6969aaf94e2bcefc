"""Predicting published measurements: the Neuron SDK 2.18 rows of benchmarks/calibration/.

A row names a model (a named config), an instance (a preset), a TP degree, a batch, input and
output lengths, and the published p50 time to first token and time per output token.
`predict_latency` runs the model timing-only on the preset as transformers-neuronx runs it
(heads padded, fp16 weights, bf16 matmuls and KV cache) and returns both predictions beside
the published figures. The rows of older SDKs (neuron_published.csv) are kept for the record
only: their software differs too much from 2.18 to be predicted by the same figures.
"""

from __future__ import annotations

import csv
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tilesim.api import load
from tilesim.device import Device
from tilesim.errors import ConfigError
from tilesim.models.named import open_for_timing
from tilesim.runtime.checks import whole
from tilesim.runtime.session import decode_shape, prefill_shape
from tilesim.runtime.timing import context_for
from tilesim.units import fmt_time


def published(name: str) -> Path:
    """A file of the published measurements (benchmarks/calibration/, installed as the data
    package `tilesim.calibration`)."""
    return Path(str(resources.files("tilesim.calibration").joinpath(name)))


_MODELS = {
    "Llama-2-13b": "llama-2-13b",
    "Llama-2-70b": "llama-2-70b",
    "opt-13b": "opt-13b",
    "opt-30b": "opt-30b",
    "opt-66b": "opt-66b",
    "Llama-2-7b": "llama-2-7b",
}


SDK218 = published("neuron_sdk218_llama2.csv")


@dataclass(frozen=True)
class LatencyRow:
    """One row of the Neuron SDK 2.18 latency tables: a request's TTFT and TPOT (p50)."""

    model: str
    instance: str
    tp: int
    batch: int
    input_len: int
    output_len: int
    ttft_s: float
    tpot_s: float
    source: str
    output_tok_s: float | None = None  # the row's own throughput: batch x output tokens per second


def load_latency_rows(path: str | Path = SDK218) -> list[LatencyRow]:
    return _read_rows(path, lambda r: LatencyRow(
        r["model"], r["instance"], int(r["tp"]), int(r["batch"]), int(r["input_len"]), int(r["output_len"]),
        float(r["ttft_p50_ms"]) / 1e3, float(r["tpot_p50_ms"]) / 1e3, r["source"],
        float(r["output_tok_s"]) if r.get("output_tok_s") else None,
    ))  # fmt: skip


def _read_rows(path: str | Path, build: Callable[[dict], Any]) -> list:
    """`build(record)` for each record of a calibration CSV; a missing file, column or number,
    or a name tilesim has no preset for, is one error naming the file and line."""
    reader = None
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return [build(record) for record in reader]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the calibration file ({exc.strerror or exc})") from None
    except (KeyError, ValueError, TypeError) as exc:
        line = f", line {reader.line_num}" if reader is not None else ""
        what = f"no column or known name {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"{path}{line}: not a row of this calibration file ({what})") from None


# Beyond this, a row's throughput and its TTFT and TPOT cannot be of one run. The other
# rows agree within 16%: their TPOT is a median over KV buckets, the throughput a mean.
OWN_FIGURES_TOLERANCE = 0.25
# From 1024 tokens a published prefill takes 230 ms or more a sequence, compute-bound: a
# request's fixed costs and the weights' reads (tens of ms) are within LONGER_PROMPT_FLOOR.
COMPUTE_BOUND_TOKENS = 1024
LONGER_PROMPT_FLOOR = 0.9


def published_conflicts(rows: list[LatencyRow]) -> list[list[str]]:
    """For each row, what in the published figures contradicts it, from the figures alone (no
    timing model):
    - its own throughput against its TTFT and TPOT;
    - its prefill against another of the same model and instance whose prompts are at least
      as long (from `COMPUTE_BOUND_TOKENS`) and whose batch holds at least as many prompt
      tokens. Run sequence by sequence or as one program, the second has at least that many
      times the products and more attention, so it takes at least `LONGER_PROMPT_FLOOR`
      times as long per token. For such a pair the text gives the smallest error that a model
      can have on both rows at once."""
    found: list[list[str]] = [[] for _ in rows]
    for i, row in enumerate(rows):
        if row.output_tok_s:
            own = row.batch * row.output_len / row.output_tok_s  # end to end, by the throughput
            timed = row.ttft_s + row.tpot_s * (row.output_len - 1)
            if abs(own / timed - 1) > OWN_FIGURES_TOLERANCE:
                found[i].append(
                    f"at {row.batch} x {row.input_len} tokens, its own throughput ({row.output_tok_s:.1f} tokens/s) "
                    f"puts the request at {own:.1f} s end to end, its TTFT and TPOT at {timed:.1f} s: the three "
                    "figures cannot be of one run"
                )
    for i, j, tokens in _prefill_bounds(rows):
        small, big = rows[i], rows[j]
        floor = LONGER_PROMPT_FLOOR * tokens
        ratio = big.ttft_s / small.ttft_s
        if ratio >= floor:
            continue
        gap = floor / ratio  # the factor a model must split between the two
        longer = big.input_len / small.input_len
        what = "as many prompt tokens" if tokens == 1 else f"{tokens:g} times the prompt tokens"
        if longer > 1:
            what += " in prompts " + ("twice" if longer == 2 else f"{longer:g} times") + " as long"
        pair = (
            f"{big.batch} x {big.input_len} tokens take {fmt_time(big.ttft_s)}, {ratio:.2f} times "
            f"{small.batch} x {small.input_len} tokens ({fmt_time(small.ttft_s)}), for {what}: no timing "
            f"model is within {(gap - 1) / (gap + 1):.0%} of both"
        )
        found[i].append(pair)
        found[j].append(pair)
    return found


def _prefill_bounds(rows: list[LatencyRow]) -> list[tuple[int, int, float]]:
    """(i, j, k): the pairs the rule of `published_conflicts` binds, row j with k times row i's
    prompt tokens, so that TTFT_j >= LONGER_PROMPT_FLOOR x k x TTFT_i for any timing model."""
    out = []
    for i, small in enumerate(rows):
        for j, big in enumerate(rows):
            tokens = big.batch * big.input_len / (small.batch * small.input_len)
            if (
                i != j
                and (small.model, small.instance) == (big.model, big.instance)
                and COMPUTE_BOUND_TOKENS <= small.input_len <= big.input_len
                and tokens >= 1
                and (small.batch, small.input_len) != (big.batch, big.input_len)
            ):
                out.append((i, j, tokens))
    return out


def smallest_worst_error(rows: list[LatencyRow]) -> float:
    """The smallest worst |TTFT error| over `rows` that any timing model obeying the rule of
    `published_conflicts` can have: 0 when the published figures obey it themselves. In logs
    the rule and the error bounds are difference constraints, feasible when their graph has no
    negative cycle (Bellman-Ford), so the bound is found by bisection."""
    bounds = _prefill_bounds(rows)
    n = len(rows)

    def feasible(error: float) -> bool:
        # log t_v <= log t_u + w for each edge (u, v, w); node n is zero
        edges = [(n, i, math.log(r.ttft_s * (1 + error))) for i, r in enumerate(rows)]
        edges += [(i, n, -math.log(r.ttft_s * (1 - error))) for i, r in enumerate(rows)]
        edges += [(j, i, -math.log(LONGER_PROMPT_FLOOR * tokens)) for i, j, tokens in bounds]
        dist = [0.0] * (n + 1)
        for _ in range(n + 1):
            changed = False
            for u, v, w in edges:
                if dist[u] + w < dist[v] - 1e-12:
                    dist[v], changed = dist[u] + w, True
            if not changed:
                return True
        return False

    if not bounds or feasible(0.0):
        return 0.0
    low, high = 0.0, 1.0 - 1e-9
    while high - low > 1e-4:
        middle = (low + high) / 2
        low, high = (low, middle) if feasible(middle) else (middle, high)
    return high


def predict_latency(row: LatencyRow, **overrides: Any) -> dict[str, Any]:
    """The simulated TTFT and TPOT (p50 over the request's decode steps) of `row`, as
    transformers-neuronx runs it: fp16 weights, bf16 matmuls and KV cache, heads padded, a
    KV cache of the whole request. Each step shape is timed once (`StepTimer`); the decode
    steps' latencies are weighted by how many of the request's steps fall in each bucket.
    `overrides` change preset figures (as Device overrides), for fitting: the model is loaded
    once per row and retimed (the same times as `generate` gives: test_fidelity_table.py)."""
    model = neuronx_model(row)
    device = Device(row.instance, cores=row.tp, backed=False, **overrides) if overrides else model.device
    timer = model.timer_for(device, spans=False)  # latencies only: a table needs no per-core spans
    ttft, tpot = request_latency(timer, row, model.max_context)
    return {
        "model": row.model,
        "instance": row.instance,
        "tp": row.tp,
        "batch": row.batch,
        "input_len": row.input_len,
        "output_len": row.output_len,
        "ttft_s": row.ttft_s,
        "predicted_ttft_s": ttft,
        "ttft_error": ttft / row.ttft_s - 1,
        "tpot_s": row.tpot_s,
        "predicted_tpot_s": tpot,
        "tpot_error": (tpot / row.tpot_s - 1) if tpot else None,
        "heads": list(model.sp.heads),
    }


def neuronx_model(row: LatencyRow):
    """The timing-only model of `row` as transformers-neuronx runs it (see `predict_latency`).
    Rows whose requests round to the same KV cache share one model."""
    context = context_for(_graph(row.model), row.input_len + row.output_len)
    return _neuronx_model(row.model, row.instance, row.tp, row.batch, context)


@functools.cache
def _graph(model: str):
    """A model's graph, read to size its KV cache: built once, not on every call of a fit (20 ms
    for Llama-2-70b). Each load opens a checkpoint of its own."""
    return open_for_timing(_MODELS[model]).graph


@functools.lru_cache(maxsize=64)
def _neuronx_model(model: str, instance: str, tp: int, batch: int, context: int):
    device = Device(instance, cores=tp, backed=False)
    return load(
        open_for_timing(_MODELS[model]), device, tp, dtype="fp16", act_dtype="bf16", kv_dtype="bf16",
        timing_only=True, pad_heads=True, batch=batch, max_context=context,
    )  # fmt: skip


def predict_latencies(
    rows: list[LatencyRow], *, jobs: int = 1, progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """`predict_latency` of each row, in the rows' order, the same figures whatever `jobs`.
    With `jobs` > 1 the rows of each model on each instance go to one of that many processes
    (started with "spawn": a script that calls this needs an `if __name__ == "__main__"`
    guard); a group's rows share its collectives' simulations. `progress(n)`: n more rows done.
    Warnings of the rows are raised here, each once."""
    jobs = whole("jobs", jobs, 1, ConfigError, maximum=None)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row.model, row.instance), []).append(i)
    jobs = min(jobs, len(groups))
    if jobs <= 1:
        out = []
        for row in rows:
            out.append(predict_latency(row))
            if progress:
                progress(1)
        return out
    import multiprocessing

    # the biggest groups first, so that no process is left with a big one at the end
    tasks = sorted(groups.values(), key=len, reverse=True)
    results: list[dict[str, Any] | None] = [None] * len(rows)
    caught_by_group: dict[int, list[tuple[type, str]]] = {}
    work = [(g, [rows[i] for i in g]) for g in tasks]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for indices, predicted, caught in pool.imap_unordered(_predict_group, work):
            for i, result in zip(indices, predicted, strict=True):
                results[i] = result
            caught_by_group[indices[0]] = caught
            if progress:
                progress(len(indices))
    # in the rows' order, as one process would raise them
    raised = dict.fromkeys(w for first in sorted(caught_by_group) for w in caught_by_group[first])
    for category, message in raised:
        warnings.warn(message, category, stacklevel=2)
    return results  # type: ignore[return-value]


def _predict_group(task: tuple[list[int], list[LatencyRow]]):
    indices, rows = task
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predicted = [predict_latency(row) for row in rows]
    return indices, predicted, [(w.category, str(w.message)) for w in caught]


def request_latency(timer, row: LatencyRow, max_context: int) -> tuple[float, float | None]:
    """(TTFT, p50 TPOT) of `row`'s request from `timer`: the prefill of its prompt, then one
    decode step per new token, each in its KV bucket."""
    needed = row.input_len + row.output_len
    ttft = timer.time(prefill_shape(row.batch, row.input_len, max_context)).latency
    steps: dict[float, int] = {}
    context = row.input_len + 1  # the first decode step's longest sequence
    while context < needed:
        shape = decode_shape(row.batch, context, max_context)
        span = min(needed, shape.context + 1) - context  # decode steps in this bucket
        latency = timer.time(shape).latency
        steps[latency] = steps.get(latency, 0) + span
        context += span
    return ttft, (_weighted_median(steps) if steps else None)


def _weighted_median(counts: dict[float, int]) -> float:
    total, seen = sum(counts.values()), 0
    for value in sorted(counts):
        seen += counts[value]
        if 2 * seen >= total:
            return value
    return max(counts)


GPU = published("gpu_published.csv")
_GPU_DTYPES = {"bf16": "bf16", "int8 (per channel)": "int8", "int4 (group 32)": "int4"}
_GPU_PRESETS = {"A100-80GB (power-limited 330 W)": "a100"}


@dataclass(frozen=True)
class GpuRow:
    """One gpt-fast row: decode tokens/s per user at batch 1 (a 5-token prompt, 200 new tokens)."""

    model: str
    instance: str  # the preset
    tp: int
    batch: int
    prompt_len: int
    dtype: str
    tpot_s: float
    source: str


def load_gpu_rows(path: str | Path = GPU) -> list[GpuRow]:
    return _read_rows(path, lambda r: GpuRow(
        r["model"].replace("llama", "Llama"), _GPU_PRESETS[r["gpu"]], int(r["tp"]), int(r["batch"]),
        int(r["prompt_len"]), _GPU_DTYPES[r["weights"]], 1.0 / float(r["decode_tok_s"]), r["source"],
    ))  # fmt: skip


GPT_FAST_NEW_TOKENS = 200  # gpt-fast's benchmark generates 200 tokens per prompt


def predict_gpu(row: GpuRow, **overrides: Any) -> dict[str, Any]:
    """The simulated decode step of `row` (its median context: the prompt and half of the new
    tokens), as gpt-fast runs it: bf16 activations and KV cache, weights as the row says."""
    model = _gpu_model(row)
    timer = model.timer_for(Device(row.instance, cores=row.tp, backed=False, **overrides), spans=False)
    shape = decode_shape(row.batch, row.prompt_len + GPT_FAST_NEW_TOKENS // 2, model.max_context)
    tpot = timer.time(shape).latency
    return {
        "model": row.model,
        "instance": row.instance,
        "tp": row.tp,
        "batch": row.batch,
        "dtype": row.dtype,
        "tpot_s": row.tpot_s,
        "predicted_tpot_s": tpot,
        "tpot_error": tpot / row.tpot_s - 1,
    }


@functools.lru_cache(maxsize=32)
def _gpu_model(row: GpuRow):
    checkpoint = open_for_timing(_MODELS[row.model])
    device = Device(row.instance, cores=row.tp, backed=False)
    context = context_for(checkpoint.graph, row.prompt_len + GPT_FAST_NEW_TOKENS)
    return load(
        checkpoint, device, row.tp, dtype=row.dtype, act_dtype="bf16", kv_dtype="bf16", timing_only=True,
        batch=row.batch, max_context=context,
    )  # fmt: skip


NCCL = published("nccl_a100_allreduce.csv")


@dataclass(frozen=True)
class AllReduceRow:
    """One point of nccl-tests' all_reduce_perf on 8 A100s (float32 elements, in place)."""

    size_bytes: int
    time_s: float
    instance: str = "a100"
    cores: int = 8


def load_allreduce_rows(path: str | Path = NCCL) -> list[AllReduceRow]:
    return _read_rows(path, lambda r: AllReduceRow(int(r["size_bytes"]), float(r["time_us"]) * 1e-6))


def predict_allreduce(row: AllReduceRow, **overrides: Any) -> dict[str, Any]:
    """The modelled all-reduce of `row`'s size on its device, the algorithm the tuner picks.
    Run on its own, as nccl-tests runs it, a collective is a program of one op: it pays the
    host's launch (`HostSpec.step_overhead_s`), which a decode step pays once for all its ops
    (gpt-fast captures each step in a CUDA graph)."""
    from tilesim.collectives.api import choose_algorithm, simulate

    device = Device(row.instance, cores=row.cores, backed=False, **overrides)
    n = row.size_bytes // 4
    algo = choose_algorithm(device, "allreduce", row.cores, n, 4, 0, "offchip")
    seconds, _ = simulate(device, "allreduce", algo, row.cores, n, 4, "offchip")
    seconds += device.spec.host.step_overhead_s
    return {
        "size_bytes": row.size_bytes,
        "time_s": row.time_s,
        "predicted_s": seconds,
        "error": seconds / row.time_s - 1,
        "algo": algo,
    }


POPTRANSFORMER = published("poptransformer_published.csv")
_IPU_PRESETS = {"IPU GC200 (Mk2)": "ipu-gc200", "C600": "c600"}
_IPU_MODELS = {"gpt2-xl": "gpt2-xl"}


@dataclass(frozen=True)
class IpuRow:
    """One row of PopTransformer's GPT2-XL table: the time of one decode step of the whole
    batch, in sharding mode (the layers split evenly over `ipus` IPUs, one after another)."""

    model: str
    instance: str  # the preset
    ipus: int
    batch: int
    max_len: int
    dtype: str
    tpot_s: float
    source: str


def load_ipu_rows(path: str | Path = POPTRANSFORMER) -> list[IpuRow]:
    return _read_rows(path, lambda r: IpuRow(
        r["model"], _IPU_PRESETS[r["hardware"]], int(r["ipus"]), int(r["batch"]), int(r["max_len"]), r["dtype"],
        float(r["latency_ms_per_step"]) / 1e3, r["source"],
    ))  # fmt: skip


def predict_ipu(row: IpuRow, **overrides: Any) -> dict[str, Any]:
    """The simulated decode step of `row` as PopTransformer runs it in sharding mode: the
    layers split evenly over the IPUs (pipeline stages of one IPU each, in turn), fp16
    weights, activations and KV cache, a static KV buffer of `max_len` positions that every
    step attends over (the step's time does not depend on how full it is)."""
    model = _ipu_model(row)
    device = Device(row.instance, cores=row.ipus, backed=False, **overrides) if overrides else model.device
    timer = model.timer_for(device, spans=False)
    tpot = timer.time(decode_shape(row.batch, row.max_len, row.max_len)).latency
    return {
        "model": row.model,
        "instance": row.instance,
        "ipus": row.ipus,
        "batch": row.batch,
        "tpot_s": row.tpot_s,
        "predicted_tpot_s": tpot,
        "tpot_error": tpot / row.tpot_s - 1,
    }


@functools.lru_cache(maxsize=16)
def _ipu_model(row: IpuRow):
    checkpoint = open_for_timing(_IPU_MODELS[row.model])
    device = Device(row.instance, cores=row.ipus, backed=False)
    # one compiled decode program over the whole static KV buffer; prompts are fed in
    # pieces of 16 (the activations of a prefill of the whole 264 would not fit beside the KV cache)
    return load(
        checkpoint, device, 1, dtype=row.dtype, act_dtype=row.dtype, kv_dtype=row.dtype, timing_only=True,
        batch=row.batch, max_context=row.max_len, pp=row.ipus, decode_buckets=[row.max_len], prefill_buckets=[16],
    )  # fmt: skip
