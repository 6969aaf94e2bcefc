"""The Python entry point: `tilesim.load`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from tilesim.collectives import algorithms_for
from tilesim.device import Device
from tilesim.errors import CheckpointError, ConfigError, ShardingError
from tilesim.models.checkpoint import SHORT_NAMES, open_checkpoint
from tilesim.models.named import open_for_timing
from tilesim.runtime.checks import flag, function, whole
from tilesim.runtime.model import Model
from tilesim.runtime.pipeline import stage_count


def _check(path_or_name, device, tp, batch, max_context, algo, switches: dict, progress) -> None:
    """The arguments of `load`, each checked where it enters (one sentence in Python's words)."""
    if not isinstance(path_or_name, str | os.PathLike) and not hasattr(path_or_name, "graph"):
        raise CheckpointError(
            f"path_or_name={path_or_name!r} must be a checkpoint folder, a .gguf file or a short name (a str)"
        )
    if not isinstance(device, str | Device):
        raise ConfigError(f"device={device!r} must be a tilesim.Device or a preset name such as 'trn1'")
    whole("tp", tp, 1, ShardingError, optional=True)
    whole("batch", batch, 1, ConfigError)
    whole("max_context", max_context, 1, ConfigError, optional=True)
    allreduce = algorithms_for("allreduce", "torus2d")  # every one, hierarchical included
    if algo != "auto" and algo not in allreduce:
        raise ConfigError(f"algo={algo!r} is not an all-reduce algorithm; use auto or one of {', '.join(allreduce)}")
    for name, value in switches.items():
        flag(name, value, ConfigError)
    function("progress", progress, ConfigError, "(done, total)", takes=2)


def open_source(path_or_name, timing_only: bool = False):
    """The checkpoint `load` reads: a path or name opened (timing needs only the config: a
    named model, a folder's config.json, a GGUF's metadata), or an already opened one as it is."""
    if isinstance(path_or_name, os.PathLike):
        path_or_name = os.fspath(path_or_name)
    if not isinstance(path_or_name, str):
        return path_or_name
    if not path_or_name.strip():  # Path("") is the current folder, which the user did not name
        raise CheckpointError(
            f"model {path_or_name!r}: give a folder, a .gguf file or a short name ({', '.join(SHORT_NAMES)})"
        )
    return open_for_timing(path_or_name) if timing_only else open_checkpoint(path_or_name)


def load(
    path_or_name,
    device: Device | str = "trn1",
    tp: int | None = None,
    dtype: str | None = None,
    *,
    act_dtype: str | None = None,
    kv_dtype: str | None = None,
    max_context: int | None = None,
    batch: int = 1,
    algo: str = "auto",
    timing_only: bool = False,
    pad_heads: bool = False,
    progress: Callable[[int, int], None] | None = None,
    prefill_buckets: Sequence[int] | None = None,
    decode_buckets: Sequence[int] | None = None,
    moe: str = "tp",
    moe_imbalance: float = 1.0,
    pp: int | None = None,
    layers_per_stage: Sequence[int] | str | None = None,
    micro_batches: int = 1,
    cluster: str | None = None,
    cores_per_actor: int | None = None,
    actor_memory: int | str | None = None,
) -> Model:
    """Open a checkpoint and place it, split `tp` ways, on `device`.

    `path_or_name` is a HF checkpoint folder, a `.gguf` file, or a short name (`smollm2`);
    with `timing_only`, also a named config (`llama-2-70b`, see models/configs/); or a
    checkpoint opened before (`open_source`), so that many loads share one reading of it.
    `device` is a Device or a preset name (then it gets `tp` cores). `tp` defaults to the
    device's core count. `dtype` is the weights' precision (fp32, fp16, bf16, fp8, fp8_e5m2,
    int8, int4, or native for a GGUF's stored types; default: as the checkpoint stores them);
    `act_dtype` and `kv_dtype` set the activations' and the KV cache's (see
    runtime/precision.py). `algo` names the all-reduce algorithm (default: chosen by size);
    the other collectives (the logits' all-gather, expert parallel's all-to-all) take it where it
    can do them, else are chosen by size.
    `prefill_buckets` and `decode_buckets` are the compiled prompt lengths and KV lengths
    (runtime/buckets.py; default: powers of two up to `max_context`). `moe` splits a mixture
    of experts by each expert's width ("tp") or places whole experts on cores ("ep", tokens
    exchanged by all-to-all); `moe_imbalance` (timing-only, expert parallel) gives the busiest
    core that many times its uniform share of the routed tokens (functional runs time the
    routing the data produced).
    `pp` splits the layers over that many pipeline stages of `tp` cores each (`tp * pp`
    cores; a preset name then gets that many), or `layers_per_stage` lists each stage's
    layers (as PopTransformer's `layer_per_ipu`); `micro_batches` cuts a batch into that many
    micro-batches that flow through the stages (runtime/pipeline.py).
    `cluster` ("auto" or a Ray address) hosts the emulated cores on Ray actors, one per host
    or `cores_per_actor` each, every actor reading its own weight slices; `actor_memory`
    (e.g. "1GiB") is each actor's budget (docs/distributed.md). `Model.close()` stops them.
    """
    _check(path_or_name, device, tp, batch, max_context, algo, {"timing_only": timing_only, "pad_heads": pad_heads},
           progress)  # fmt: skip
    whole("pp", pp, 1, ShardingError, optional=True)
    whole("micro_batches", micro_batches, 1, ConfigError)
    if micro_batches != 1 and stage_count(pp, layers_per_stage) == 1:  # ignored, it would read as obeyed
        raise ConfigError(
            f"micro_batches={micro_batches} cuts a batch for pipeline stages; give `pp` or `layers_per_stage` too"
        )
    if cluster is not None and not isinstance(cluster, str):
        raise ConfigError(f"cluster={cluster!r} must be a Ray address or 'auto'")
    if cluster is not None and timing_only:  # ignored, it would read as obeyed
        raise ConfigError(
            f"cluster={cluster!r} hosts the cores' weights and arithmetic on Ray actors; a timing-only run has "
            "neither and runs in this process: leave `cluster` out"
        )
    for name, value in (("cores_per_actor", cores_per_actor), ("actor_memory", actor_memory)):
        if value is not None and cluster is None:  # ignored, they would read as obeyed
            raise ConfigError(f"{name}={value!r} is for cores hosted on Ray actors; give `cluster` too")
    if isinstance(device, str):
        cores = None if tp is None else tp * stage_count(pp, layers_per_stage)
        device = Device(device, cores=cores, backed=not timing_only and cluster is None)
    tp = tp if tp is not None else max(1, device.num_cores // stage_count(pp, layers_per_stage))
    checkpoint = open_source(path_or_name, timing_only)
    return Model(
        checkpoint,
        device,
        tp,
        dtype=dtype,
        act_dtype=act_dtype,
        kv_dtype=kv_dtype,
        max_context=max_context,
        batch=batch,
        algo=algo,
        timing_only=timing_only,
        pad_heads=pad_heads,
        progress=progress,
        prefill_buckets=prefill_buckets,
        decode_buckets=decode_buckets,
        moe=moe,
        moe_imbalance=moe_imbalance,
        pp=pp,
        layers_per_stage=layers_per_stage,
        micro_batches=micro_batches,
        cluster=cluster,
        source=os.fspath(path_or_name) if isinstance(path_or_name, str | os.PathLike) else None,
        cores_per_actor=cores_per_actor,
        actor_memory=actor_memory,
    )
