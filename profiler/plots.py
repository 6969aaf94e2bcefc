"""Plots of a run (matplotlib, PNG), from its `Trace` and report.

- `timeline.png`: one decode step, a row per core; kernels coloured by op type, collectives
  and waiting marked, fabric messages drawn on each core's link row;
- `memory.png`: bytes in use on every tile (cores by tiles, as PopVision shows it), and each
  core's memory stacked by kind (weights, KV cache, activations);
- `roofline.png`: every kernel of a decode step by arithmetic intensity and achieved
  FLOP/s, against the device's rooflines (peak compute; off-chip and tile memory bandwidth
  where weights are off-chip, since activations are read from tile memory);
- `breakdown.png`: each step's latency stacked by op type (its critical path).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from tilesim.errors import ConfigError
from tilesim.profiler.events import StepRecord, Trace
from tilesim.profiler.output import all_or_nothing, writable_folder
from tilesim.profiler.report import step_breakdown, step_names
from tilesim.units import fmt_rate

BARS = 200  # steps up to which breakdown.png draws a bar per step

COLOURS = {
    "attention": "#4c72b0",
    "mlp": "#55a868",
    "norm": "#c44e52",
    "residual": "#8172b2",
    "embedding": "#ccb974",
    "lm_head": "#64b5cd",
    "collective": "#dd8452",
    "idle": "#dddddd",
    "transfer": "#937860",
    "host": "#8c8c8c",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _decode_step(trace: Trace) -> StepRecord:
    decode = [s for s in trace.steps if s.phase == "decode"]
    with_transfers = [s for s in decode if s.messages]
    return (with_transfers or decode or trace.steps)[0]


def timeline(trace: Trace, path: Path) -> None:
    plt = _pyplot()
    step = _decode_step(trace)
    cores = trace.device.get("cores", 1)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.9 * cores))
    scale = 1e6  # microseconds
    # one collection per row and colour: a decode step of a 7B model on 32 cores is 16,000
    # kernels and 65,000 messages, and a collection each took matplotlib past ten minutes
    bars: dict[tuple[float, float, str], list[tuple[float, float]]] = defaultdict(list)  # (y, height, colour)
    for span in step.spans:
        colour = COLOURS.get(span.op_type, "#999999") if span.lane != "wait" else COLOURS["idle"]
        bars[(cores - 1 - span.core + 0.35, 0.55, colour)].append((span.start * scale, span.duration * scale))
    for move in step.transfers:
        xrange = (move.start * scale, (move.end - move.start) * scale)
        bars[(cores - 1 - move.src + 0.05, 0.25, COLOURS["transfer"])].append(xrange)
    for (y, height, colour), xranges in bars.items():
        ax.broken_barh(xranges, (y, height), facecolors=colour, linewidth=0)
    ax.set_yticks([cores - 1 - c + 0.5 for c in range(cores)], [f"core {c}" for c in range(cores)])
    ax.set_ylim(0, cores)  # the default 5% margin is one and a half empty rows at 32 cores
    ax.set_xlabel("simulated time in the step (us)")
    title = f"decode step {step.index}: {step.latency * 1e6:.1f} us on {cores} core(s) of {trace.device.get('name')}"
    ax.set_title(title + " (kernels above, fabric messages below)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    # below the axis label at a fixed distance: a fraction of the axes put 32 cores' legend 7 inches down
    below = 0.5 / (0.9 * cores)  # inches under the axes over the axes' height
    ax.legend(handles, list(COLOURS), ncol=5, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -below))
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def memory(trace: Trace, path: Path) -> None:
    plt = _pyplot()
    mem = trace.memory
    usage = np.array(mem.tile_usage, dtype=float) / mem.tile_bytes
    fig = plt.figure(figsize=(13, 6 + 0.3 * len(mem.per_core)))
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 1], height_ratios=[1 + 0.1 * len(mem.per_core), 1])
    heat, bars, by_kind = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    image = heat.imshow(usage, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    heat.set_xlabel("tile")
    heat.set_ylabel("core")
    heat.set_yticks(range(len(mem.per_core)))
    heat.set_title(f"tile memory in use (fraction of {mem.tile_bytes // 1024} KiB per tile)")
    on_tiles = bool(usage.any())
    if not on_tiles:
        heat.text(0.5, 0.5, _NOTHING_ON_TILES, ha="center", va="center", color="white", transform=heat.transAxes)
    fig.colorbar(image, ax=heat, fraction=0.03)
    colours = {"weights": "#4c72b0", "kv_cache": "#dd8452", "recurrent_state": "#c44e52", "activations": "#55a868"}
    tensors = [k for k in colours if any(k in c for c in mem.per_core)]
    runtime = sorted({k for c in mem.per_core for k in c} - set(tensors))
    others = iter(("#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"))
    colours = {**colours, **{k: next(others, "#999999") for k in runtime}}
    kinds = tensors + runtime
    bottom = np.zeros(len(mem.per_core))
    for kind in kinds:
        colour = colours[kind]
        values = np.array([c.get(kind, 0) for c in mem.per_core], dtype=float) / 2**20
        bars.bar(range(len(values)), values, bottom=bottom, color=colour, label=f"{kind} ({mem.regions[kind]})")
        bottom += values
    bars.set_xlabel("core")
    bars.set_ylabel("MiB")
    bars.set_title("memory per core")
    bars.legend(fontsize=7)
    _tiles_by_kind(by_kind, mem, colours, on_tiles)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


_NOTHING_ON_TILES = "no array is placed in tile memory: every one is in off-chip memory (memory per core)"


def _tiles_by_kind(ax, mem, colours: dict[str, str], on_tiles: bool) -> None:
    """The fullest core's tiles, stacked by category (tensors and the runtime's own), as
    PopVision's memory view shows them."""
    if not mem.tile_kinds:
        ax.set_axis_off()
        return
    if not on_tiles:
        ax.set_axis_off()
        ax.text(0.5, 0.5, _NOTHING_ON_TILES, ha="center", va="center", transform=ax.transAxes)
        return
    core = int(np.argmax([sum(map(sum, kinds.values())) for kinds in mem.tile_kinds]))
    kinds = mem.tile_kinds[core]
    tiles = np.arange(len(mem.tile_usage[core]))
    bottom = np.zeros(len(tiles))
    for kind in sorted(kinds, key=lambda k: list(colours).index(k) if k in colours else len(colours)):
        values = np.array(kinds[kind], dtype=float) / 1024
        colour = colours.get(kind, "#999999")
        ax.fill_between(tiles, bottom, bottom + values, step="mid", color=colour, label=kind, linewidth=0)
        bottom += values
    ax.axhline(mem.tile_bytes / 1024, color="black", linewidth=0.8, linestyle="--", label="tile capacity")
    ax.set_xlim(-0.5, len(tiles) - 0.5)
    ax.set_xlabel("tile")
    ax.set_ylabel("KiB")
    ax.set_title(f"core {core}: each tile's memory by category")
    ax.legend(fontsize=7, ncol=4, loc="upper right")


def roofline(trace: Trace, path: Path) -> None:
    plt = _pyplot()
    step = _decode_step(trace)
    peak = trace.device.get("peak_flops", 1.0)
    bandwidth = trace.device.get("memory_bandwidth", 1.0)
    fig, ax = plt.subplots(figsize=(7, 5))
    seen = set()
    for span in step.spans:
        if span.lane != "compute" or span.flops <= 0 or span.bytes <= 0 or span.core != 0:
            continue
        intensity = span.flops / span.bytes
        achieved = span.flops / span.duration
        label = span.op_type if span.op_type not in seen else None
        seen.add(span.op_type)
        ax.scatter(intensity, achieved, s=18, color=COLOURS.get(span.op_type, "#999999"), label=label, alpha=0.8)
    x = np.logspace(-2, 4, 200)
    for label, rate, style in _ceilings(trace.device, bandwidth):
        ax.loglog(x, np.minimum(peak, x * rate), color="black", linewidth=1.2, linestyle=style, label=label)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"kernels of one decode step on {trace.device.get('name')} (core 0)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _ceilings(device: dict, bandwidth: float) -> list[tuple[str, float, str]]:
    """(label, bytes/s, line style) of each memory a kernel reads: where weights are off-chip,
    the activations a kernel reads from tile memory are charged at the tile bandwidth, so small
    element-wise kernels sit above the off-chip line and below the tile one."""
    offchip, tiles = device.get("offchip_bandwidth", 0.0), device.get("tile_bandwidth", 0.0)
    if device.get("weights_in") != "offchip" or not offchip or not tiles or tiles == offchip:
        return [(f"roofline ({fmt_rate(bandwidth)})", bandwidth, "-")]
    return [
        (f"roofline, off-chip memory ({fmt_rate(offchip)})", offchip, "-"),
        (f"roofline, tile memory ({fmt_rate(tiles)})", tiles, "--"),
    ]


def breakdown(trace: Trace, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    steps = trace.steps
    shared: dict[int, dict[str, float]] = {}  # steps of one shape share their spans: one breakdown each
    for step in steps:
        if id(step.spans) not in shared:
            shared[id(step.spans)] = step_breakdown(step)
    parts = [shared[id(step.spans)] for step in steps]
    types = sorted({k for p in parts for k in p}, key=lambda k: -sum(p.get(k, 0) for p in parts))
    bottom = np.zeros(len(steps))
    for kind in types:
        values = np.array([p.get(kind, 0.0) for p in parts]) * 1e3
        colour = COLOURS.get(kind, "#999999")
        if len(steps) <= BARS:
            ax.bar(range(len(steps)), values, bottom=bottom, color=colour, label=kind)
        else:  # a bar a step is unreadable (and slow) past a few hundred: the same stack as areas
            ax.fill_between(range(len(steps)), bottom, bottom + values, step="mid", color=colour, label=kind, lw=0)
        bottom += values
    if len(steps) <= BARS:
        labels = [name.removeprefix("decode ") for name in step_names(steps)]
        ax.set_xticks(range(len(steps)), labels, fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("simulated latency (ms)")
    ax.set_title("latency per step by op type (critical path)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_plots(trace: Trace, report: dict, folder: str | Path) -> list[Path]:
    """Write the four PNGs into `folder` (made as needed), all or none; returns their paths."""
    if not isinstance(trace, Trace):
        raise ConfigError(f"trace={trace!r:.60} must be a run's trace (GenerateOutput.trace)")
    folder = writable_folder(folder, "plots folder")
    folder.mkdir(parents=True, exist_ok=True)
    draws = (("timeline", timeline), ("memory", memory), ("roofline", roofline), ("breakdown", breakdown))
    paths = [folder / f"{name}.png" for name, _ in draws]
    with all_or_nothing(paths) as temporary:
        for (_, draw), path in zip(draws, temporary, strict=True):
            draw(trace, path)
    return paths
