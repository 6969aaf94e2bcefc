"""Predicting published measurements: the calibration rows of benchmarks/calibration/.

A row names a model (a named config), an instance (a preset), a TP degree, a batch, input and
output lengths, and the published throughput (input + output tokens over the request) or,
when no input length is given, the latency per generated token. `predict` runs the model
timing-only on the preset, with heads padded as transformers-neuronx pads them, fp16
weights and bf16 matmuls, and returns the prediction beside the published figure.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilesim.api import load
from tilesim.device import Device
from tilesim.models.named import open_for_timing
from tilesim.runtime.session import decode_shape, prefill_shape
from tilesim.runtime.timing import context_for, kv_context

_MODELS = {
    "Llama-2-13b": "llama-2-13b",
    "Llama-2-70b": "llama-2-70b",
    "opt-13b": "opt-13b",
    "opt-30b": "opt-30b",
    "opt-66b": "opt-66b",
    "Llama-2-7b": "llama-2-7b",
}


@dataclass(frozen=True)
class Row:
    model: str
    instance: str
    tp: int
    batch: int
    input_len: int | None
    output_len: int
    throughput: float
    latency_ms: float
    source: str

    @property
    def published_s(self) -> float:
        """End-to-end seconds of the request, or seconds per generated token without an input length."""
        if self.input_len is None:
            return self.latency_ms / 1e3
        return (self.input_len + self.output_len) / self.throughput

    @property
    def what(self) -> str:
        return "per generated token" if self.input_len is None else "end to end"


def load_rows(path: str | Path) -> list[Row]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                Row(
                    model=r["model"],
                    instance=r["instance"],
                    tp=int(r["tp"]),
                    batch=int(r["batch"]),
                    input_len=int(r["input_len"]) if r["input_len"] else None,
                    output_len=int(r["output_len"]),
                    throughput=float(r["throughput_tok_s"]),
                    latency_ms=float(r["latency_per_token_ms"]),
                    source=r["source"],
                )
            )
    return rows


def predict(row: Row, **overrides: Any) -> dict[str, Any]:
    """The simulated figure for `row` (same meaning as `row.published_s`), and the error.

    `overrides` change preset figures (as Device overrides), for fitting.
    """
    checkpoint = open_for_timing(_MODELS[row.model])
    limit = checkpoint.graph.max_positions
    prompt = row.input_len or 1
    new = min(row.output_len, limit - prompt - 1)  # the model's positions bound the request
    context = kv_context(prompt + new + 1, limit)  # the prefill's token and `new` decode steps
    model = _as_neuronx_runs_it(checkpoint, row.instance, row.tp, row.batch, context, "fp16", **overrides)
    # The first new token comes from the prefill; `output_len` decode steps follow it.
    out = model.generate(
        [[0] * prompt] * row.batch, max_new_tokens=new + (1 if row.input_len else 0), eos_token_id=None
    )
    decode = [s.latency for s in out.trace.steps if s.phase == "decode"]
    per_token = sum(decode) / len(decode)
    predicted = per_token if row.input_len is None else out.trace.steps[0].latency + sum(decode)
    return {
        "model": row.model,
        "instance": row.instance,
        "tp": row.tp,
        "input_len": row.input_len,
        "output_len": row.output_len,
        "what": row.what,
        "published_s": row.published_s,
        "predicted_s": predicted,
        "error": predicted / row.published_s - 1,
        "ttft_s": out.trace.steps[0].latency,
        "decode_mean_s": sum(decode) / max(1, len(decode)),
    }


SDK218 = Path(__file__).resolve().parent.parent / "benchmarks" / "calibration" / "neuron_sdk218_llama2.csv"


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


def load_latency_rows(path: str | Path = SDK218) -> list[LatencyRow]:
    with open(path, newline="") as f:
        return [
            LatencyRow(
                r["model"], r["instance"], int(r["tp"]), int(r["batch"]), int(r["input_len"]), int(r["output_len"]),
                float(r["ttft_p50_ms"]) / 1e3, float(r["tpot_p50_ms"]) / 1e3, r["source"],
            )
            for r in csv.DictReader(f)
        ]  # fmt: skip


def predict_latency(row: LatencyRow) -> dict[str, Any]:
    """The simulated TTFT and TPOT (p50 over the request's decode steps) of `row`, as
    transformers-neuronx runs it: fp16 weights, bf16 matmuls and KV cache, heads padded, a
    KV cache of the whole request. Each step shape is timed once (`StepTimer`); the decode
    steps' latencies are weighted by how many of the request's steps fall in each bucket."""
    needed = row.input_len + row.output_len
    checkpoint = open_for_timing(_MODELS[row.model])
    context = context_for(checkpoint.graph, needed)
    model = _as_neuronx_runs_it(checkpoint, row.instance, row.tp, row.batch, context, "bf16")
    ttft = model.timer.time(prefill_shape(row.batch, row.input_len, model.max_context)).latency
    steps: dict[float, int] = {}
    context = row.input_len + 1  # the first decode step's longest sequence
    while context < needed:
        shape = decode_shape(row.batch, context, model.max_context)
        span = min(needed, shape.context + 1) - context  # decode steps in this bucket
        latency = model.timer.time(shape).latency
        steps[latency] = steps.get(latency, 0) + span
        context += span
    tpot = _weighted_median(steps) if steps else None
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


def _as_neuronx_runs_it(checkpoint, instance: str, tp: int, batch: int, context: int, kv: str, **overrides: Any):
    """A timing-only model as transformers-neuronx runs the published rows: fp16 weights,
    bf16 matmuls, heads padded (`overrides` change preset figures, for fitting)."""
    device = Device(instance, cores=tp, backed=False, **overrides)
    return load(
        checkpoint, device, tp, dtype="fp16", act_dtype="bf16", kv_dtype=kv, timing_only=True, pad_heads=True,
        batch=batch, max_context=context,
    )  # fmt: skip


def _weighted_median(counts: dict[float, int]) -> float:
    total, seen = sum(counts.values()), 0
    for value in sorted(counts):
        seen += counts[value]
        if 2 * seen >= total:
            return value
    return max(counts)
