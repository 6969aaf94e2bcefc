"""What a run reports about its model and device: the device's figures, the model's shape
and precision, the bytes of every weight class, and the memory snapshot of every core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tilesim.device.device import describe
from tilesim.profiler.events import MemorySnapshot
from tilesim.runtime import memplan
from tilesim.runtime.precision import weight_class

if TYPE_CHECKING:
    from tilesim.runtime.model import Model


def device_info(model: Model) -> dict:
    info = describe(model.device.spec)
    info["cores"] = model.cores
    info["peak_flops"] = model.device.spec.core.peak_flops[model.precision.compute_dtype]
    return info


def model_info(model: Model) -> dict:
    cfg = model.checkpoint.config
    return {
        "name": model.checkpoint.name,
        "arch": cfg.model_type,
        "layers": cfg.layers,
        "hidden": cfg.hidden,
        "heads": cfg.heads,
        "kv_heads": cfg.kv_heads,
        "params": cfg.params,
        "tp": model.tp,
        "pipeline": model.stages.describe(),
        "dtype": model.dtype,
        "act_dtype": model.precision.activations,
        "compute_dtype": model.precision.compute_dtype,  # the peak MFU is measured against
        "kv_dtype": model.precision.kv,
        "max_context": model.max_context,
        "batch": model.batch,
        "precision": precision_report(model),
        "heads_padded_to": model.sp.heads[0],
        "timing_only": model.timing_only,
        "buckets": {"prefill": list(model.buckets.prefill), "decode": list(model.buckets.decode)},
        "staged_rows": model.timer.staged_rows(),
    }


def precision_report(model: Model) -> dict:
    """The format of every weight class, its bytes over all cores, and the bytes saved against fp32."""
    classes: dict[str, dict] = {}
    for param, spec in model.graph.params.items():
        entry = classes.setdefault(weight_class(param), {"formats": set(), "bytes": 0, "fp32_bytes": 0})
        entry["formats"].add(model.formats[param])
        copies = len(model.pipeline.param_stages.get(param, (0,)))  # a tied embedding: on two stages
        entry["bytes"] += copies * sum(sum(sizes) for sizes in model.weight_sizes[param])
        entry["fp32_bytes"] += copies * sum(
            int(np.prod(model.sp.local_shape(param, spec.shape, c))) * 4 for c in range(model.tp)
        )
    for entry in classes.values():
        entry["formats"] = sorted(entry["formats"])
    stored = sum(e["bytes"] for e in classes.values())
    fp32 = sum(e["fp32_bytes"] for e in classes.values())
    distinct = 0  # a slice held by several cores (replicated norms, key/value heads) counted once
    for param in model.graph.params:
        seen = set()
        for core in range(model.tp):
            key = (model.sp.rows[param][core], model.sp.cols[param][core])
            if key not in seen:
                seen.add(key)
                distinct += sum(model.weight_sizes[param][core])
    return {
        "weights": classes,
        "activations": model.precision.activations,
        "kv_cache": model.precision.kv,
        "weight_bytes": stored,  # held over all cores, replicated copies on each core counted
        "distinct_weight_bytes": distinct,
        "fp32_weight_bytes": fp32,
        "bytes_saved": fp32 - stored,
    }


def memory_snapshot(model: Model) -> MemorySnapshot:
    per_core, peak, usage, tenants, kinds = [], [], [], [], []
    for core in range(model.cores):
        memory = model.device.cores[core].memory
        per_core.append(memory.used_by_kind())
        peak.append(memory.peak)
        tiles = memory.regions["tiles"]
        use = tiles.tile_usage()
        usage.append(use.tolist())
        fullest = np.argsort(-use, kind="stable")[:3]
        tenants.append([(int(t), [(b.name, tiles.bytes_on(b, int(t))) for b in tiles.tenants(int(t))[:3]])
                        for t in fullest])  # fmt: skip
        kinds.append({kind: on_tiles.tolist() for kind, on_tiles in tiles.tile_usage_by_kind().items()})
    spec = model.device.spec.core
    live = [memplan.live_bytes(model.program, layout) for layout in model.plan.layouts]
    return MemorySnapshot(
        per_core,
        dict(model.plan.regions),
        {"tiles": spec.tile_memory_bytes, "offchip": spec.offchip_bytes},
        peak,
        usage,
        spec.tile_bytes,
        tenants,
        live,
        list(model.plan.notes),
        kinds,
    )
