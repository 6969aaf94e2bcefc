"""Plots of a served workload (matplotlib, PNG).

- `latency_cdf.png`: the distribution of TTFT, TPOT and end-to-end latency over requests;
- `serving_timeline.png`: over the run, the slots held and the requests queued, and the KV
  cache in use against what the slots reserve (on the fullest core); with a few hundred
  requests or fewer, each request's wait, prefill and decode as a bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tilesim.profiler.output import all_or_nothing, writable_folder
from tilesim.profiler.plots import _pyplot
from tilesim.serving.metrics import request_times

GANTT_LIMIT = 300  # requests drawn one by one up to this many


def latency_cdf(result, path: Path) -> None:
    plt = _pyplot()
    times = request_times(result)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, name, label in zip(
        axes,
        ("ttft", "tpot", "e2e"),
        ("time to first token", "time per output token", "end-to-end latency"),
        strict=True,
    ):
        values = np.sort(times[name][np.isfinite(times[name])]) * 1e3
        if len(values):
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post")
            for q in (50, 90, 99):
                ax.axvline(np.percentile(values, q), color="#999999", lw=0.8, ls=":")
        ax.set_xlabel(f"{label} (ms)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    fig.suptitle(_title(result))
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def timeline(result, path: Path) -> None:
    plt = _pyplot()
    steps = result.steps
    gantt = len(result.requests) <= GANTT_LIMIT
    rows = 3 if gantt else 2
    fig, axes = plt.subplots(rows, 1, figsize=(12, 3 + 2.2 * rows), sharex=True)
    t = np.asarray(steps.start) + np.asarray(steps.duration)
    axes[0].step(t, steps.running, where="pre", label="slots held")
    axes[0].step(t, steps.waiting, where="pre", label="queued")
    axes[0].axhline(result.max_num_seqs, color="#999999", lw=0.8, ls="--", label="max_num_seqs")
    axes[0].set_ylabel("requests")
    axes[0].legend(loc="upper right", fontsize=8)
    memory = result.memory
    kv = np.asarray(steps.kv_positions) * memory["kv_bytes_per_position"] / 2**30
    axes[1].step(t, kv, where="pre", label="KV cache in use")
    axes[1].axhline(
        memory["by_kind"].get("kv_cache", 0) / 2**30,
        color="#999999",
        lw=0.8,
        ls="--",
        label="KV cache reserved by the slots",
    )
    axes[1].set_ylabel(f"GiB on core {memory['core']}")
    axes[1].legend(loc="upper right", fontsize=8)
    if gantt:
        ax = axes[2]
        for i, r in enumerate(result.requests):
            ax.broken_barh([(r.request.arrival, r.admitted - r.request.arrival)], (i, 0.8), facecolors="#dddddd")
            ax.broken_barh([(r.admitted, r.first_token - r.admitted)], (i, 0.8), facecolors="#dd8452")
            ax.broken_barh([(r.first_token, r.finished - r.first_token)], (i, 0.8), facecolors="#4c72b0")
        ax.set_ylabel("request (queued / prefill / decode)")
        ax.invert_yaxis()
    axes[-1].set_xlabel("simulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(_title(result))
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _title(result) -> str:
    m = result.model
    return (
        f"{m['name']} on {result.device['name']} (TP {m['tp']}), {len(result.requests)} requests, "
        f"{result.scheduler} batching, {result.max_num_seqs} slots"
    )


def write_plots(result, folder: str | Path) -> list[Path]:
    """Both plots into `folder` (made if missing), written all or nothing."""
    folder = writable_folder(folder, "plots folder")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "latency_cdf.png", folder / "serving_timeline.png"]
    with all_or_nothing(paths) as temporary:
        latency_cdf(result, temporary[0])
        timeline(result, temporary[1])
    return paths
