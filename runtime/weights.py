"""A model's weights on the cores: the format each is stored in, the bytes of each core's
slice, and loading (each core's slice read from the checkpoint, packed and copied into its
arena). Timing-only runs place the same bytes, with nothing read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tilesim.device.device import Device
from tilesim.device.kernels import quant
from tilesim.device.memory import Block
from tilesim.runtime import memplan
from tilesim.runtime.graph import DecoderGraph
from tilesim.runtime.pipeline import Pipeline
from tilesim.runtime.precision import Precision
from tilesim.runtime.shard import ShardPlan

BLOCK_FORMATS = ("q4_0", "q4_1", "q8_0")
BLOCK = quant.BLOCK


def storage_formats(graph: DecoderGraph, precision: Precision, checkpoint) -> dict[str, str]:
    """param -> the format it is stored in on the cores."""
    return {p: precision.format_for(p, len(s.shape), checkpoint.stored_type(p)) for p, s in graph.params.items()}


def dequantized_types(graph: DecoderGraph, precision: Precision, checkpoint) -> list[str]:
    """A native run's notes on the GGUF tensors of a type the kernels do not read as stored
    (Q4_K, Q6_K, Q5_0, BF16, ...): dequantized at load, so held, counted and timed as fp32,
    several times the file's bytes; a user of a Q4_K_M download should know that the times are
    not the 4-bit format's."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    counts: dict[str, list[int]] = {}  # type -> [tensors, weights]
    for param, spec in graph.params.items():
        stored = checkpoint.stored_type(param)
        if len(spec.shape) != 2 or stored in (None, "F32") or precision.format_for(param, 2, stored) != "fp32":
            continue
        seen = counts.setdefault(stored, [0, 0])
        seen[0] += 1
        seen[1] += math.prod(spec.shape)
    if not counts:
        return []
    stored_bytes = 0.0
    for qtype, (_, weights) in counts.items():
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
        stored_bytes += weights * size / block
    held = 4 * sum(w for _, w in counts.values())
    which = ", ".join(f"{n} {qtype}" for qtype, (n, _) in sorted(counts.items()))
    return [
        f"weights of {which} tensors are dequantized at load (no kernel here reads those types as stored): "
        f"held, counted and timed as fp32, {held / stored_bytes:.1f}x their bytes in the file; "
        "dtype int4 or int8 (--dtype) holds and times a quantized format"
    ]


def keep_blocks_whole(formats: dict[str, str], graph: DecoderGraph, sp: ShardPlan) -> list[str]:
    """A block-quantized weight split by columns off block boundaries, or padded (heads) to a
    width that is not whole blocks, is dequantized (changes `formats`); the notes say which.
    Padding by whole blocks keeps the checkpoint's blocks, with zero blocks added."""
    notes = []
    for param, fmt in formats.items():
        if fmt not in BLOCK_FORMATS:
            continue
        cols = sp.cols[param]
        widths = sp.local_cols.get(param)
        off_block = any(c is not None and (c[0] % BLOCK or c[1] % BLOCK) for c in cols)
        if off_block or (widths is not None and any(w % BLOCK for w in widths)):
            formats[param] = "fp32"
            notes.append(f"{param}: its column split is not a multiple of {BLOCK}; dequantized to fp32")
    return notes


def array_bytes(graph: DecoderGraph, sp: ShardPlan, formats: dict[str, str], param: str, core: int) -> list[int]:
    """The bytes of each array `param`'s slice on `core` is stored as."""
    shape = sp.local_shape(param, graph.params[param].shape, core)
    if len(shape) == 1:
        return [shape[0] * 4]
    return [math.prod(s) * d.itemsize for s, d in quant.array_shapes(formats[param], shape).values()]


def load(
    checkpoint,
    sp: ShardPlan,
    formats: dict[str, str],
    sizes: dict[str, list[list[int]]],
    plan: memplan.MemoryPlan,
    device: Device,
    pipeline: Pipeline,
    *,
    timing_only: bool,
    progress: Callable[[int, int], None] | None = None,
    lanes: list[int] | None = None,
) -> tuple[list[dict[str, object]], list[tuple[int, Block]]]:
    """Every core's weights (name -> fp32 array or Packed views into its arena; empty when
    timing-only) and the blocks they occupy. Cores are stage * tp + lane: a weight is read
    once per lane and placed on that lane's core of every stage that uses it
    (`Pipeline.param_stages`; one stage unless an embedding is tied to the LM head).
    `lanes`: read only these lanes' slices (a Ray actor's cores, runtime/distributed.py)."""
    graph = checkpoint.graph
    tp = sp.tp
    weights: list[dict[str, object]] = [{} for _ in range(pipeline.stages.cores)]
    blocks: list[tuple[int, Block]] = []
    params = list(graph.params.items())
    mine = list(range(tp)) if lanes is None else list(lanes)
    total, done = len(params) * len(mine), 0
    for name, spec in params:
        held = pipeline.param_stages.get(name, (0,))
        for lane in mine:
            cores = [stage * tp + lane for stage in held]
            if timing_only:
                for core in cores:
                    for i, nbytes in enumerate(sizes[name][lane]):
                        blocks.append((core, memplan.place(plan, device, core, "weights", nbytes, f"{name}[{i}]")))
            else:
                shape = sp.local_shape(name, spec.shape, lane)
                value = _read(checkpoint, sp, name, formats[name], lane, shape)
                for core in cores:
                    weights[core][name] = _place(plan, device, blocks, name, core, value)
            done += 1
            if progress:
                progress(done, total)
    return weights, blocks


def _read(checkpoint, sp: ShardPlan, name: str, fmt: str, core: int, shape: tuple[int, ...]):
    """This core's slice of a weight, in its storage format (a Packed, or fp32 for vectors)."""
    lo, hi = sp.rows[name][core]
    cols = sp.cols[name][core]
    real = checkpoint.graph.params[name].shape
    rows = slice(lo, min(hi, real[0]))
    columns = None if cols is None else slice(cols[0], min(cols[1], real[1]))
    nothing = rows.start >= rows.stop or (columns is not None and columns.start >= columns.stop)
    if fmt in BLOCK_FORMATS and checkpoint.stored_type(name) == fmt.upper():
        if nothing:  # only padding heads on this core
            return quant.zeros(fmt, shape)
        block_cols = None if columns is None else slice(columns.start // BLOCK, columns.stop // BLOCK)
        width = real[1] if columns is None else columns.stop - columns.start
        stored = quant.from_blocks(checkpoint.read_stored(name, rows, block_cols), fmt, (rows.stop - rows.start, width))
        return stored if stored.shape == tuple(shape) else quant.padded(stored, shape)
    # only padding heads on this core: nothing to read
    values = np.zeros((0,) * len(shape), np.float32) if nothing else checkpoint.read(name, rows, columns)
    if values.shape != shape:  # padded heads: zero rows or columns beyond the real ones
        padded = np.zeros(shape, np.float32)
        padded[tuple(slice(0, n) for n in values.shape)] = values
        values = padded
    return values if len(shape) == 1 else quant.pack(values, fmt)


def _place(plan: memplan.MemoryPlan, device: Device, blocks: list, name: str, core: int, value):
    """Copy a weight into the core's memory; returns the views the kernels will read."""
    memory = device.cores[core].memory
    arrays = {"w": value} if isinstance(value, np.ndarray) else value.arrays
    views = {}
    for i, (key, array) in enumerate(arrays.items()):
        block = memplan.place(plan, device, core, "weights", array.nbytes, f"{name}[{i}]" if i else name)
        blocks.append((core, block))
        view = memory.view(block, array.dtype, array.shape)
        view[...] = array
        views[key] = view
    return views["w"] if isinstance(value, np.ndarray) else quant.Packed(value.fmt, value.shape, views)
