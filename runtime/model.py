"""A model placed on an emulated device: weights sharded over cores, a KV cache in device
memory, compiled steps, and `generate`.

    model = Model(checkpoint, Device("trn1", cores=3), tp=3)
    out = model.generate([[1, 2, 3]], max_new_tokens=16)

Loading plans every core's memory first (raising OutOfTileMemory before anything is read
if the model does not fit), then reads each core's weight slices straight into its arena.
Each step runs functionally on the cores (unless timing-only) and is timed from its static
shape; the run's `Trace` and report come back with the tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tilesim.device import kernels
from tilesim.device.analytic import AnalyticFabric
from tilesim.device.device import Device, describe
from tilesim.device.kernels import quant
from tilesim.device.kernels.rotary import rope_tables
from tilesim.errors import ConfigError, GenerationError, NumericalError, ShardingError
from tilesim.profiler.events import MemorySnapshot, StepRecord, Trace
from tilesim.profiler.report import build_report
from tilesim.runtime import memplan, shard
from tilesim.runtime.execute import Executor, StepInputs
from tilesim.runtime.graph import DecoderGraph
from tilesim.runtime.kvcache import KVCache, kv_arrays
from tilesim.runtime.precision import Precision, weight_class
from tilesim.runtime.program import lower
from tilesim.runtime.sampling import SamplingParams, choose
from tilesim.runtime.timing import StepShape, StepTimer, bucket

_DEFAULT = object()
BLOCK_FORMATS = ("q4_0", "q4_1", "q8_0")
BLOCK = quant.BLOCK
PREFILL_SMALLEST, DECODE_SMALLEST = 16, 128  # smallest compiled buckets (tokens, context)


@dataclass
class GenerateOutput:
    """What `generate` returns: new ids per prompt (up to and with EOS), report, trace."""

    tokens: list[np.ndarray]
    prompt_tokens: list[np.ndarray]
    report: dict
    trace: Trace
    logits: list[np.ndarray] | None = None
    finished: list[bool] = field(default_factory=list)

    def sequences(self, pad: int = 0) -> np.ndarray:
        """The new tokens as one (batch, longest) array, shorter rows padded with `pad`."""
        width = max((len(t) for t in self.tokens), default=0)
        out = np.full((len(self.tokens), width), pad, dtype=np.int64)
        for i, t in enumerate(self.tokens):
            out[i, : len(t)] = t
        return out


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
    ):
        start = time.perf_counter()
        if tp > device.num_cores:
            raise ShardingError(f"--tp {tp} needs {tp} cores but the device has {device.num_cores}; pass --cores {tp}")
        self.checkpoint, self.device, self.tp = checkpoint, device, tp
        self.graph: DecoderGraph = checkpoint.graph
        self.timing_only = timing_only
        gguf = checkpoint.format == "gguf"
        stored = {"float16": "fp16", "bfloat16": "bf16"}.get(checkpoint.config.extra.get("dtype"), "fp32")
        self.precision = Precision.make(dtype or ("native" if gguf else stored), act_dtype, kv_dtype, gguf)
        self.dtype = self.precision.weights
        self.max_context = int(max_context or min(self.graph.max_positions, 2048))
        if not 1 <= self.max_context <= self.graph.max_positions:
            raise ConfigError(
                f"--max-context {self.max_context} is out of range: {self.graph.name} has "
                f"{self.graph.max_positions} positions"
            )
        self.notes: list[str] = []
        self.formats = {
            p: self.precision.format_for(p, len(s.shape), checkpoint.stored_type(p))
            for p, s in self.graph.params.items()
        }
        blocky = any(f in BLOCK_FORMATS for f in self.formats.values())
        self.sp = shard.plan(self.graph, tp, granule=BLOCK if blocky else 1, pad_heads=pad_heads)
        if self.sp.heads[0] != self.graph.heads:
            extra = self.sp.heads[0] / self.graph.heads - 1
            self.notes.append(
                f"{self.graph.heads} attention heads padded to {self.sp.heads[0]} for {tp} cores: "
                f"{extra:.0%} more attention work and key/value memory"
            )
        self._keep_blocks_whole()
        # 16-bit activations round each op's output before the next reads it: no fusion then
        self.program = lower(self.graph, self.sp, fuse=self.precision.activations not in ("fp16", "bf16"))
        self.weight_sizes = {p: [self._array_bytes(p, c) for c in range(tp)] for p in self.graph.params}
        self.weight_bytes = {
            p: sum(self.weight_sizes[p][0]) / max(1, int(np.prod(self.sp.local_shape(p, spec.shape, 0))))
            for p, spec in self.graph.params.items()
        }
        self.algo = algo
        self._progress = progress
        self.weights: list[dict[str, object]] = [{} for _ in range(tp)]
        self._blocks: list = []
        self.batch, self.all_logits = 0, False
        self._session(batch, False)  # plans memory for everything, raising before any weight is read
        self._load_weights()
        self.wall = {"load_s": time.perf_counter() - start, "compile_s": 0.0}
        if not timing_only:
            compile_start = time.perf_counter()
            kernels.warm_up(self.precision.activations == "int8")
            self.wall["compile_s"] = time.perf_counter() - compile_start

    # -- placement ----------------------------------------------------------------------

    def _keep_blocks_whole(self) -> None:
        """A block-quantized weight split by columns off block boundaries (or padded) is dequantized."""
        for param, fmt in self.formats.items():
            if fmt not in BLOCK_FORMATS:
                continue
            cols = self.sp.cols[param]
            shape = self.graph.params[param].shape
            padded = any(hi > shape[0] for _, hi in self.sp.rows[param]) or any(
                c is not None and c[1] > shape[1] for c in cols
            )
            if padded or any(c is not None and (c[0] % BLOCK or c[1] % BLOCK) for c in cols):
                self.formats[param] = "fp32"
                self.notes.append(f"{param}: its column split is not a multiple of {BLOCK}; dequantized to fp32")

    def _array_bytes(self, param: str, core: int) -> list[int]:
        shape = self.sp.local_shape(param, self.graph.params[param].shape, core)
        if len(shape) == 1:
            return [shape[0] * 4]
        return [int(np.prod(s)) * d.itemsize for s, d in quant.array_shapes(self.formats[param], shape).values()]

    def _session(self, batch: int, all_logits: bool) -> None:
        """Plan and place the KV cache and activations for `batch` sequences (weights stay).

        `all_logits` keeps the LM head's output for every prefill position (for tests that
        compare them), which needs a larger logits buffer.
        """
        d = self.graph.head_dim
        kv_layouts = [kv_arrays(self.precision.kv, batch, hi - lo, self.max_context, d) for lo, hi in self.sp.kv_heads]
        kv_sizes = [[int(np.prod(shape)) * dt.itemsize for shape, dt in layout.values()] for layout in kv_layouts]
        plan = memplan.plan_memory(
            self.program,
            self.device,
            batch=batch,
            prefill_tokens=bucket(self.max_context, PREFILL_SMALLEST, self.max_context),
            weight_sizes=self.weight_sizes,
            kv_sizes=kv_sizes,
            all_logits=all_logits,
        )
        plan.notes[:0] = self.notes
        for core, block in getattr(self, "_session_blocks", []):
            self.device.cores[core].memory.free(block)
        self.plan, self.batch, self.all_logits = plan, batch, all_logits
        self._session_blocks = []
        self.kv: list[list[KVCache | None]] = [[] for _ in range(self.tp)]
        self.acts: list[dict[str, np.ndarray]] = [{} for _ in range(self.tp)]
        for core in range(self.tp):
            memory = self.device.cores[core].memory
            for layer in range(self.graph.layers):
                arrays = {}
                for name, (shape, dt) in kv_layouts[core].items():
                    nbytes = int(np.prod(shape)) * dt.itemsize
                    block = memplan.place(plan, self.device, core, "kv_cache", nbytes, f"kv.{layer}.{name}")
                    self._session_blocks.append((core, block))
                    arrays[name] = None if self.timing_only else memory.view(block, dt, shape)
                self.kv[core].append(None if self.timing_only else KVCache(self.precision.kv, **arrays))
            layout = plan.layouts[core]
            block = memplan.place(plan, self.device, core, "activations", layout.total, "activations")
            self._session_blocks.append((core, block))
            if not self.timing_only:
                raw = memory.view(block, np.uint8, (layout.total,))
                for name, offset in layout.offsets.items():
                    rows, width = layout.shapes[name]
                    self.acts[core][name] = (
                        raw[offset : offset + rows * width * 4].view(np.float32).reshape(rows, width)
                    )
        self.timer = StepTimer(
            self.program,
            self.device,
            self.weight_bytes,
            self.precision,
            plan.regions["activations"],
            self.algo,
            self.formats,
        )
        self.executor = None
        if not self.timing_only and self.weights[0]:
            self._build_executor()

    def _load_weights(self) -> None:
        params = list(self.graph.params.items())
        total = len(params) * self.tp
        done = 0
        for name, spec in params:
            fmt = self.formats[name]
            for core in range(self.tp):
                shape = self.sp.local_shape(name, spec.shape, core)
                if self.timing_only:
                    for i, nbytes in enumerate(self.weight_sizes[name][core]):
                        block = memplan.place(self.plan, self.device, core, "weights", nbytes, f"{name}[{i}]")
                        self._blocks.append((core, block))
                else:
                    self.weights[core][name] = self._place(name, core, shape, self._read(name, fmt, core, shape))
                done += 1
                if self._progress:
                    self._progress(done, total)
        if not self.timing_only:
            self._build_executor()

    def _read(self, name: str, fmt: str, core: int, shape: tuple[int, ...]):
        """This core's slice of a weight, in its storage format (a Packed, or fp32 for vectors)."""
        lo, hi = self.sp.rows[name][core]
        cols = self.sp.cols[name][core]
        if fmt in BLOCK_FORMATS and self.checkpoint.stored_type(name) == fmt.upper():
            block_cols = None if cols is None else slice(cols[0] // BLOCK, cols[1] // BLOCK)
            return quant.from_blocks(self.checkpoint.read_stored(name, slice(lo, hi), block_cols), fmt, shape)
        real = self.graph.params[name].shape
        values = self.checkpoint.read(
            name, slice(lo, min(hi, real[0])), None if cols is None else slice(cols[0], min(cols[1], real[1]))
        )
        if values.shape != shape:  # padded heads: zero rows or columns beyond the real ones
            padded = np.zeros(shape, np.float32)
            padded[tuple(slice(0, n) for n in values.shape)] = values
            values = padded
        return values if len(shape) == 1 else quant.pack(values, fmt)

    def _place(self, name: str, core: int, shape: tuple[int, ...], value):
        """Copy a weight into the core's memory; returns the views the kernels will read."""
        memory = self.device.cores[core].memory
        arrays = {"w": value} if isinstance(value, np.ndarray) else value.arrays
        views = {}
        for i, (key, array) in enumerate(arrays.items()):
            block = memplan.place(self.plan, self.device, core, "weights", array.nbytes, f"{name}[{i}]" if i else name)
            self._blocks.append((core, block))
            view = memory.view(block, array.dtype, array.shape)
            view[...] = array
            views[key] = view
        return views["w"] if isinstance(value, np.ndarray) else quant.Packed(value.fmt, value.shape, views)

    def _build_executor(self) -> None:
        rope = next((n for n in self.graph.nodes if n.op == "rope"), None)
        tables = rope_tables(self.max_context, rope.attrs["inv_freq"]) if rope else None
        fabric = AnalyticFabric(self.device.spec.fabric, self.tp)
        self.executor = Executor(
            self.program,
            self.weights,
            self.kv,
            self.acts,
            fabric,
            self.timer.algorithm,
            tables,
            self.precision.activations,
        )

    # -- generation ---------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]] | np.ndarray,
        max_new_tokens: int = 32,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        eos_token_id: int | Sequence[int] | object | None = _DEFAULT,
        on_token: Callable[[int, int], None] | None = None,
        return_logits: bool | str = False,
    ) -> GenerateOutput:
        """Generate up to `max_new_tokens` for each prompt (a list of id lists, or a 1-D/2-D array).

        Greedy unless `temperature`, `top_k` or `top_p` is given. A sequence stops after an
        EOS id (the model's unless `eos_token_id` says otherwise; None never stops).
        `on_token(prompt_index, id)` sees tokens as they come. `return_logits=True` keeps
        each step's logits of the last position, `"all"` also every prefill position.
        """
        prompts = self._check_prompts(prompts, max_new_tokens)
        params = SamplingParams(temperature, top_k, top_p, seed)
        eos = set(self.graph.meta.get("eos_token_ids", ())) if eos_token_id is _DEFAULT else _as_set(eos_token_id)
        b = len(prompts)
        if b != self.batch or (return_logits == "all") != self.all_logits:
            self._session(b, return_logits == "all")
        rng = np.random.default_rng(seed)
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        new: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        trace = Trace(device=self._device_info(), model=self._model_info())
        kept_logits: list[np.ndarray] = []
        gathered = "all" if return_logits == "all" else params.gathered
        t_prefill = int(lengths.max())
        shape = StepShape(
            "prefill",
            b,
            bucket(t_prefill, PREFILL_SMALLEST, self.max_context),
            bucket(t_prefill, PREFILL_SMALLEST, self.max_context),
            gathered,
        )
        ids = np.zeros((b, t_prefill), dtype=np.int64)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = p
        inputs = StepInputs(
            ids.reshape(-1),
            np.tile(np.arange(t_prefill, dtype=np.int64), b),
            np.zeros(b, np.int64),
            lengths.copy(),
            b,
            t_prefill,
            return_logits == "all",
        )
        wall_decode, decode_steps = 0.0, 0
        clock = 0.0
        for step in range(max_new_tokens):
            timing = self.timer.time(shape)
            logits = None
            t0 = time.perf_counter()
            if self.executor is not None:
                logits = self.executor.step(inputs)
                if return_logits:
                    kept_logits.append(logits.copy())
                if inputs.all_logits:
                    logits = logits[inputs.last_rows]
                if not np.isfinite(logits).all():  # IEEE propagation (docs/numerics.md) makes this visible
                    raise NumericalError(
                        f"the logits of step {step} ({shape.phase}) hold NaN or infinity: an activation overflowed "
                        "or the checkpoint holds such values; check its weights, or try a wider dtype"
                    )
                chosen = choose(logits, params, rng)
            else:
                chosen = np.zeros(b, dtype=np.int64)
            active = sum(not d for d in done)
            detail = timing.messages if step < 2 else []  # fabric messages: prefill and the first decode step
            trace.steps.append(
                StepRecord(step, shape.phase, clock, timing.latency, vars(shape).copy(), timing.spans, detail, active)
            )
            clock += timing.latency
            for i in range(b):
                if done[i]:
                    continue
                token = int(chosen[i])
                if self.executor is not None:
                    new[i].append(token)
                    if on_token:
                        on_token(i, token)
                if token in eos:
                    done[i] = True
            lengths += 1
            if step > 0:
                wall_decode += time.perf_counter() - t0
                decode_steps += 1
            if all(done) or step == max_new_tokens - 1:
                break
            context = int(lengths.max())
            shape = StepShape("decode", b, 1, bucket(context, DECODE_SMALLEST, self.max_context), params.gathered)
            inputs = StepInputs(chosen.astype(np.int64), lengths - 1, lengths - 1, np.ones(b, np.int64), b, 1)
        trace.memory = self._memory_snapshot()
        trace.wall = {
            **self.wall,
            "decode_s": wall_decode,
            "decode_tokens_per_s": (decode_steps * b / wall_decode) if wall_decode > 0 else 0.0,
        }
        return GenerateOutput(
            tokens=[np.array(t, dtype=np.int64) for t in new],
            prompt_tokens=[np.array(p, dtype=np.int64) for p in prompts],
            report=build_report(trace),
            trace=trace,
            logits=kept_logits if return_logits else None,
            finished=done,
        )

    def _check_prompts(self, prompts, max_new_tokens: int) -> list[list[int]]:
        if isinstance(prompts, np.ndarray):
            prompts = [prompts.tolist()] if prompts.ndim == 1 else prompts.tolist()
        prompts = [list(map(int, p)) for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise GenerationError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        vocab = self.graph.vocab_size
        for p in prompts:
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise GenerationError(f"token id {bad[0]} is outside the vocabulary of {vocab} ids")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_context:
            raise GenerationError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new ones needs "
                f"{longest + max_new_tokens} positions, but the model was compiled for max_context={self.max_context}; "
                "load it with a larger max_context"
            )
        return prompts

    # -- reports ------------------------------------------------------------------------

    def _device_info(self) -> dict:
        info = describe(self.device.spec)
        info["cores"] = self.tp
        info["peak_flops"] = self.device.spec.core.peak_flops[self.precision.compute_dtype]
        return info

    def _model_info(self) -> dict:
        cfg = self.checkpoint.config
        return {
            "name": self.checkpoint.name,
            "arch": cfg.model_type,
            "layers": cfg.layers,
            "hidden": cfg.hidden,
            "heads": cfg.heads,
            "kv_heads": cfg.kv_heads,
            "params": cfg.params,
            "tp": self.tp,
            "dtype": self.dtype,
            "act_dtype": self.precision.activations,
            "kv_dtype": self.precision.kv,
            "max_context": self.max_context,
            "batch": self.batch,
            "precision": self.precision_report(),
            "heads_padded_to": self.sp.heads[0],
            "timing_only": self.timing_only,
        }

    def precision_report(self) -> dict:
        """The format of every weight class, its bytes over all cores, and the bytes saved against fp32."""
        classes: dict[str, dict] = {}
        for param, spec in self.graph.params.items():
            entry = classes.setdefault(weight_class(param), {"formats": set(), "bytes": 0, "fp32_bytes": 0})
            entry["formats"].add(self.formats[param])
            entry["bytes"] += sum(sum(sizes) for sizes in self.weight_sizes[param])
            entry["fp32_bytes"] += sum(
                int(np.prod(self.sp.local_shape(param, spec.shape, c))) * 4 for c in range(self.tp)
            )
        for entry in classes.values():
            entry["formats"] = sorted(entry["formats"])
        stored = sum(e["bytes"] for e in classes.values())
        fp32 = sum(e["fp32_bytes"] for e in classes.values())
        return {
            "weights": classes,
            "activations": self.precision.activations,
            "kv_cache": self.precision.kv,
            "weight_bytes": stored,
            "fp32_weight_bytes": fp32,
            "bytes_saved": fp32 - stored,
        }

    def _memory_snapshot(self) -> MemorySnapshot:
        per_core, peak, usage, tenants = [], [], [], []
        for core in range(self.tp):
            memory = self.device.cores[core].memory
            per_core.append(memory.used_by_kind())
            peak.append(memory.peak)
            tiles = memory.regions["tiles"]
            use = tiles.tile_usage()
            usage.append(use.tolist())
            fullest = np.argsort(-use, kind="stable")[:3]
            tenants.append([(int(t), [(b.name, b.size) for b in tiles.tenants(int(t))[:3]]) for t in fullest])
        spec = self.device.spec.core
        live = [memplan.live_bytes(self.program, layout) for layout in self.plan.layouts]
        return MemorySnapshot(
            per_core,
            dict(self.plan.regions),
            {"tiles": spec.tile_memory_bytes, "offchip": spec.offchip_bytes},
            peak,
            usage,
            spec.tile_bytes,
            tenants,
            live,
            list(self.plan.notes),
        )


def _as_set(eos) -> set[int]:
    if eos is None:
        return set()
    if isinstance(eos, int | np.integer):
        return {int(eos)}
    return {int(e) for e in eos}
