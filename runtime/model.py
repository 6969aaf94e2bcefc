"""A model placed on an emulated device: weights sharded over cores, a KV cache in device
memory, its compiled Program, and `generate`.

    model = Model(checkpoint, Device("trn1", cores=3), tp=3)
    out = model.generate([[1, 2, 3]], max_new_tokens=16)

Loading resolves the precision, shards the graph (`shard.py`), lowers it once into a Program
(`program.py`), plans every core's memory (raising OutOfTileMemory before anything is read
if the model does not fit: `session.py`), then reads each core's weight slices straight into
its arena (`weights.py`). The executor (numbers), the step timer (time) and the memory plan
all walk that one Program; timing-only is the same Program bound to nothing. The generate
loop is `generate.py`, what a run reports about the model `reporting.py`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from tilesim.device import kernels
from tilesim.device.analytic import AnalyticFabric
from tilesim.device.device import Device
from tilesim.device.kernels.rotary import rope_tables
from tilesim.errors import ConfigError, OutOfHostMemory, OutOfMemory, OutOfTileMemory, ShardingError, TilesimWarning
from tilesim.runtime import distributed, pipeline, shard, weights
from tilesim.runtime.buckets import Buckets
from tilesim.runtime.checks import whole
from tilesim.runtime.collective_plan import CollectivePlan
from tilesim.runtime.exclusive import RunGuard
from tilesim.runtime.execute import Executor
from tilesim.runtime.generate import GenerateOutput, generate
from tilesim.runtime.graph import DecoderGraph
from tilesim.runtime.precision import Precision
from tilesim.runtime.program import lower
from tilesim.runtime.reporting import precision_report
from tilesim.runtime.session import Session, check_host, host_parts, place
from tilesim.runtime.timing import StepTimer, beyond_training, position_limit

__all__ = ["GenerateOutput", "Model"]


class Model:
    """A checkpoint sharded over `tp` cores of `device`; see the module doc."""

    def __init__(
        self,
        checkpoint,
        device: Device,
        tp: int,
        *,
        dtype: str | None = None,
        act_dtype: str | None = None,
        kv_dtype: str | None = None,
        max_context: int | None = None,
        batch: int = 1,
        algo: str = "auto",
        timing_only: bool = False,
        pad_heads: bool = False,
        progress: Callable | None = None,
        prefill_buckets: Sequence[int] | None = None,
        decode_buckets: Sequence[int] | None = None,
        moe: str = "tp",
        moe_imbalance: float = 1.0,
        pp: int | None = None,
        layers_per_stage: Sequence[int] | str | None = None,
        micro_batches: int = 1,
        cluster: str | None = None,
        source: str | None = None,
        cores_per_actor: int | None = None,
        actor_memory: int | str | None = None,
        lanes: Sequence[int] | None = None,
    ):
        """`cluster` (a Ray address or "auto") hosts the cores on Ray actors that read the
        checkpoint at `source` themselves (runtime/distributed.py); `lanes` is an actor's own
        share (the driver passes it)."""
        start = time.perf_counter()
        kwargs = {
            "dtype": dtype, "act_dtype": act_dtype, "kv_dtype": kv_dtype, "max_context": max_context, "batch": batch,
            "algo": algo, "pad_heads": pad_heads, "prefill_buckets": prefill_buckets, "decode_buckets": decode_buckets,
            "moe": moe, "moe_imbalance": moe_imbalance, "pp": pp, "layers_per_stage": layers_per_stage,
            "micro_batches": micro_batches,
        }  # fmt: skip
        self.hosted = cluster is not None and not timing_only  # numbers on actors, time and plan here
        if self.hosted and not isinstance(source, str):
            raise ConfigError("`cluster` needs the checkpoint as a path or a name (each actor opens it itself)")
        self.lanes = None if lanes is None else list(lanes)
        self.remote: distributed.RemoteExecutor | None = None  # the actors, once they run
        self._loaded = False  # the weights are in place: sessions bind the executor
        self.graph: DecoderGraph = checkpoint.graph
        self.stages = pipeline.make_stages(self.graph.layers, tp, pp, layers_per_stage, micro_batches)
        self.cores = self.stages.cores
        if self.cores > device.num_cores:
            what = f"tp={tp}" if self.stages.pp == 1 else f"tp={tp} x pp={self.stages.pp}"
            raise ShardingError(
                f"{what} needs {self.cores} cores but the device has {device.num_cores}; give it cores={self.cores}"
            )
        self.checkpoint, self.device, self.tp = checkpoint, device, tp
        self.runs = RunGuard(self.graph.label)  # one run at a time (runtime/exclusive.py)
        self.timing_only = timing_only
        gguf = checkpoint.format == "gguf"
        stored = {"float16": "fp16", "bfloat16": "bf16"}.get(checkpoint.config.extra.get("dtype"), "fp32")
        self.precision = Precision.make(
            dtype if dtype is not None else ("native" if gguf else stored), act_dtype, kv_dtype, gguf
        )
        self.dtype = self.precision.weights
        self.max_context = int(max_context or min(self.graph.max_positions, 2048))
        limit = position_limit(self.graph)
        if limit is not None and not 1 <= self.max_context <= limit:
            raise ConfigError(
                f"max_context={self.max_context} is out of range: {self.graph.label} has "
                f"{self.graph.max_positions} learned positions"
            )
        self.notes: list[str] = []
        beyond = beyond_training(self.graph, self.max_context, f"max_context={self.max_context} is")
        if beyond is not None:
            warnings.warn(beyond, TilesimWarning, stacklevel=2)
            # the report's words fit a context given or derived (the command line derives one)
            self.notes.append(
                beyond_training(self.graph, self.max_context, f"a KV cache of {self.max_context} positions is")
            )
        rope = next((n for n in self.graph.nodes if n.op == "rope"), None)
        # the rotary frequencies of a run that computes, before any weight is read: a rope type
        # without them here is refused now, not after the load
        self._rotary = rope.attrs["rotary"](self.max_context) if rope is not None and not timing_only else None
        self.formats = weights.storage_formats(self.graph, self.precision, checkpoint)
        blocky = any(f in weights.BLOCK_FORMATS for f in self.formats.values())
        self.sp = shard.plan(self.graph, tp, granule=weights.BLOCK if blocky else 1, pad_heads=pad_heads, moe=moe)
        self.moe = moe
        if not (isinstance(moe_imbalance, int | float) and 1.0 <= moe_imbalance <= 1e6):
            raise ConfigError(f"moe_imbalance={moe_imbalance!r} must be a number of at least 1 (1: uniform routing)")
        if moe_imbalance != 1.0 and moe != "ep":
            raise ConfigError(
                f"moe_imbalance={moe_imbalance!r} is the busiest expert-parallel core's share of the tokens: "
                "it needs moe='ep' (whole experts on cores)"
            )
        self.moe_imbalance = float(moe_imbalance)
        if self.sp.heads[0] != self.graph.heads:
            extra = self.sp.heads[0] / self.graph.heads - 1
            kv = self.graph.kv_heads
            cache = f", key/value heads {kv} -> {self.sp.heads[1]}" if self.sp.heads[1] != kv else ""
            replicated = (
                ", each core holding one key/value head"
                if self.sp.kv_heads[0][1] - self.sp.kv_heads[0][0] == 1 and kv < tp
                else ""
            )
            self.notes.append(
                f"{self.graph.heads} attention heads padded to {self.sp.heads[0]} for {tp} cores{cache}{replicated}: "
                f"{extra:.0%} more attention work"
            )
        self.notes += weights.keep_blocks_whole(self.formats, self.graph, self.sp)
        if self.precision.weights == "native":
            self.notes += weights.dequantized_types(self.graph, self.precision, checkpoint)
        self.pipeline = pipeline.split(self.sp, self.stages)
        for param in self.pipeline.shared_params():
            held = ", ".join(map(str, self.pipeline.param_stages[param]))
            self.notes.append(f"{param} is used on pipeline stages {held}: each holds a copy")
        # 16-bit activations round each op's output before the next reads it: no fusion then
        fuse = self.precision.activations not in ("fp16", "bf16")
        self.program = lower(self.graph, self.sp, fuse=fuse, pipeline=self.pipeline)
        self.weight_sizes = {
            p: [weights.array_bytes(self.graph, self.sp, self.formats, p, c) for c in range(tp)]
            for p in self.graph.params
        }
        self.weight_bytes = {
            p: sum(self.weight_sizes[p][0]) / max(1, int(np.prod(self.sp.local_shape(p, spec.shape, 0))))
            for p, spec in self.graph.params.items()
        }
        self.algo = algo
        self.buckets = Buckets.make(self.max_context, prefill_buckets, decode_buckets)
        self.weights: list[dict[str, object]] = [{} for _ in range(self.cores)]
        self._session: Session | None = None
        self.session(batch, False)  # plans memory for everything, raising before any weight is read
        self.weights, self._blocks = weights.load(
            checkpoint,
            self.sp,
            self.formats,
            self.weight_sizes,
            self.plan,
            device,
            self.pipeline,
            timing_only=timing_only or self.hosted,
            progress=progress,
            lanes=self.lanes,
        )
        self._loaded = True
        if self.hosted:
            self.remote = distributed.start(self, source, cluster, cores_per_actor, actor_memory, kwargs)
        self._bind()
        self.wall = {"load_s": time.perf_counter() - start, "compile_s": 0.0}
        if not timing_only and not self.hosted:
            compile_start = time.perf_counter()
            kernels.warm_up(self.precision.activations == "int8")
            self.wall["compile_s"] = time.perf_counter() - compile_start

    @property
    def plan(self):
        return self._session.plan

    def check_host(self, positions: int, beside: Model | None = None, written: str | None = None) -> None:
        """Refuse a run whose sequences, `positions` each, would fill more of the KV cache than
        this machine's memory holds beside the weights (runs that compute; session.check_host).
        `beside`: another model computing in the same run (a speculative run's draft), whose
        weights, cache and activations count too. `written`: which positions the message
        names, where `positions` is a mean over the sequences."""
        if self.timing_only or self.hosted:
            return
        other = None
        if beside is not None and not (beside.timing_only or beside.hosted):
            held = sum(host_parts(beside.plan, positions, beside.max_context).values())
            other = (f"the draft ({beside.graph.label})", held)
        try:
            check_host(self.plan, self.graph.label, self.device.num_cores, positions, self.max_context, other, written)
        except OutOfHostMemory as exc:
            raise OutOfHostMemory(f"{exc}{self._fp32_hint()}") from None

    def _fp32_hint(self) -> str:
        return "; the weights are fp32 here: dtype='fp16' (or 'bf16') halves them" if self.dtype == "fp32" else ""

    @property
    def batch(self) -> int:
        return self._session.batch

    @property
    def prefill_batch(self) -> int:
        """The most sequences one prefill step of this session holds."""
        return self._session.prefill_batch

    @property
    def all_logits(self) -> bool:
        return self._session.all_logits

    def prefill_group(self, batch: int) -> int:
        """The sequences of a `batch` that one prefill program takes on this device: its
        runtime's context batch (`HostSpec.context_batch`; a Neuron runtime prefills one
        sequence at a time), or the whole batch."""
        return min(batch, self.device.spec.host.context_batch or batch)

    def session(self, batch: int, all_logits: bool, prefill_batch: int | None = None) -> None:
        """Plan and place the KV cache and activations for `batch` sequences (weights stay),
        for prefill steps of up to `prefill_batch` of them (default: `prefill_group(batch)`,
        as the device's runtime prefills them)."""
        whole("batch", batch, 1, ConfigError)
        whole("prefill_batch", prefill_batch, 1, ConfigError, optional=True)
        if prefill_batch is not None and prefill_batch > batch:
            raise ConfigError(
                f"prefill_batch={prefill_batch} is more than the batch of {batch}: a prefill runs the batch's sequences"
            )
        if prefill_batch is None:
            prefill_batch = self.prefill_group(batch)
        try:
            new = place(
                self.program,
                self.device,
                kv_format=self.precision.kv,
                max_context=self.max_context,
                batch=batch,
                all_logits=all_logits,
                weight_sizes=self.weight_sizes,
                notes=self.notes,
                views=not self.timing_only and not self.hosted,
                replacing=self._session,
                prefill_batch=prefill_batch,
                buckets=self.buckets,
            )
        except OutOfMemory as exc:  # halving the weights is the first thing to try when they are what overflows
            region = "tiles" if isinstance(exc, OutOfTileMemory) else "offchip"
            host = isinstance(exc, OutOfHostMemory)  # this machine holds every core's weights, wherever placed
            if self.dtype != "fp32" or not (host or self.device.spec.placement["weights"] == region):
                raise
            raise type(exc)(f"{exc}{self._fp32_hint()}") from None
        if new.prefill_batch < batch:
            programs = -(-batch // new.prefill_batch)
            each = f"{new.prefill_batch} sequence{'s' if new.prefill_batch > 1 else ''}"
            new.plan.notes.append(
                f"a prefill of the batch of {batch} runs as {programs} programs of {each}, one after another (the "
                "device runtime's context batch); the memory plan holds one program's activations"
            )
        self._session = new
        itemsize, region = self.precision.act_bytes, new.plan.regions["activations"]
        self.collectives = CollectivePlan(self.device, self.tp, itemsize, region, self.algo)
        self.timer = self._timer(self.device, self.collectives)
        if self.remote is not None:
            self.remote.session(batch, all_logits, prefill_batch)
        if self.timing_only or self._loaded:
            self._bind()

    def timer_for(self, device: Device, *, spans: bool = True) -> StepTimer:
        """A step timer of this model, placed as it is, on `device`: the same device with
        other timing figures (e.g. `Device(name, cores=tp, link_latency="1 us")`), to ask what
        a figure changes without loading the model again. `spans=False`: latencies only."""
        if not isinstance(device, Device):
            raise ConfigError(f"device={device!r} must be a tilesim.Device, e.g. Device('trn1', cores={self.tp})")
        if device.num_cores != self.device.num_cores:
            raise ConfigError(f"the model runs on {self.device.num_cores} cores; the device has {device.num_cores}")
        itemsize, region = self.precision.act_bytes, self._session.plan.regions["activations"]
        return self._timer(device, CollectivePlan(device, self.tp, itemsize, region, self.algo), spans)

    def _timer(self, device: Device, collectives: CollectivePlan, spans: bool = True) -> StepTimer:
        return StepTimer(
            self.program, device, self.weight_bytes, self.precision, collectives, self.formats, spans=spans,
            moe_imbalance=self.moe_imbalance,
        )  # fmt: skip

    def _bind(self) -> None:
        """The executor of this session: the Program bound to the cores' arrays (to nothing
        when timing-only, so a step runs no kernel and returns no logits)."""
        if self.remote is not None:  # the numbers run on the actors
            self.executor = self.remote
            return
        tables = rope_tables(self.max_context, *self._rotary) if self._rotary is not None else None
        self.executor = Executor(
            self.program,
            self.weights,
            self._session.kv,
            self._session.acts,
            AnalyticFabric(self.device.spec.fabric, self.tp),
            self.collectives,
            tables,
            self.precision.activations,
            null=self.timing_only,
            lanes=self.lanes,
        )

    generate = generate  # the loop is runtime/generate.py's `generate(model, prompts, ...)`

    def close(self) -> None:
        """Stop the Ray actors hosting the cores (and the local cluster this load started)."""
        if self.remote is not None:
            self.remote.close()

    def precision_report(self) -> dict:
        """The format of every weight class, its bytes over all cores, and the bytes saved against fp32."""
        return precision_report(self)
