"""A server on the emulated device: requests arrive, a scheduler fills a fixed number of
sequence slots (`max_num_seqs`, each with its own region of the KV cache), and every step
runs the model's compiled programs: a prefill program per request (or one for a static
batch) and the decode program over all slots.

Time comes from the model's step timer, per compiled shape, exactly as `generate` times
its steps: a prefill of T tokens in its bucket (a chunk after cached positions in the bucket
of its tokens, attending to the cached ones too; the request's setup counted once, before
its first chunk), and the decode program compiled for all `max_num_seqs` slots (static
shapes: an idle slot costs as much as a busy one) in the bucket of the longest context.
The programs of one step run in turn.

Functional runs (a model loaded with weights) compute the real tokens on the cores: each
prefill runs on its request's slot, each decode step on all slots with idle ones masked,
so a request's tokens do not depend on what else is in the batch. Sampling uses the
request's own seed. Timing-only runs make no tokens and run the requested output lengths.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from numbers import Integral, Real

import numpy as np

from tilesim.errors import GenerationError, NumericalError
from tilesim.runtime.checks import flag, function, whole
from tilesim.runtime.exclusive import one_run_at_a_time
from tilesim.runtime.program import StepInputs
from tilesim.runtime.sampling import SamplingParams, choose
from tilesim.serving.scheduler import Live, Scheduler, ServerState, StepPlan, make_scheduler
from tilesim.serving.workload import LATEST_ARRIVAL, Request, WorkloadError, check_unique_ids, late_arrival


@dataclass
class StepLog:
    """The server's steps as columns (one entry per step)."""

    start: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    decoding: list[int] = field(default_factory=list)  # sequences that decoded a token
    prefill_tokens: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)  # slots held after the step
    waiting: list[int] = field(default_factory=list)  # requests queued after the step
    kv_positions: list[int] = field(default_factory=list)  # cached positions held after the step

    def add(self, start, duration, decoding, prefill_tokens, running, waiting, kv_positions) -> None:
        self.start.append(start)
        self.duration.append(duration)
        self.decoding.append(decoding)
        self.prefill_tokens.append(prefill_tokens)
        self.running.append(running)
        self.waiting.append(waiting)
        self.kv_positions.append(kv_positions)

    def __len__(self) -> int:
        return len(self.start)


@dataclass
class ServeResult:
    """A served workload: every request's times (and tokens), the steps, the setup."""

    requests: list[Live]
    steps: StepLog
    scheduler: str
    max_num_seqs: int
    chunk_size: int | None
    functional: bool
    memory: dict  # per core (the fullest): bytes by kind, and the KV bytes per cached position
    device: dict
    model: dict
    programs: dict[str, int] = field(default_factory=dict)  # compiled bucket -> times it ran

    def tokens(self) -> dict[int, list[int]]:
        """Each request's generated ids, by request id (functional runs)."""
        return {r.request.id: list(r.tokens) for r in self.requests}

    def summary(self) -> dict:
        from tilesim.serving.metrics import summarise

        return summarise(self)


class _Clock:
    """Each step's time from the model's step timer (cached per compiled shape)."""

    def __init__(self, model, max_num_seqs: int, gathered: str):
        self.timer, self.buckets = model.timer, model.buckets
        self.slots, self.gathered = max_num_seqs, gathered
        self._prefill: dict[tuple[int, int, int], tuple[float, str]] = {}
        self.programs: dict[str, int] = {}  # compiled bucket -> programs run in it

    def prefill(self, batch: int, tokens: int, cached: int) -> float:
        key = (batch, tokens, cached)
        known = self._prefill.get(key)
        if known is None:
            if cached == 0:
                shape = self.buckets.prefill_shape(batch, tokens, self.gathered)
                name = f"prefill {shape.tokens}"
            else:  # a chunk: the bucket of its tokens, attending to the cached positions too
                shape = self.buckets.chunk_shape(batch, tokens, cached, self.gathered)
                name = f"prefill {shape.tokens} over {shape.context}"
            seconds = self.timer.time(shape).latency  # a chunk pays no request setup (chunk_shape)
            known = self._prefill[key] = (seconds, name)
        self.programs[known[1]] = self.programs.get(known[1], 0) + 1
        return known[0]

    def decode(self, context: int) -> float:
        shape = self.buckets.decode_shape(self.slots, context, self.gathered)
        name = f"decode {shape.context}"
        self.programs[name] = self.programs.get(name, 0) + 1
        return self.timer.time(shape).latency

    def step(self, plan: StepPlan) -> float:
        seconds = 0.0
        if plan.batched and plan.prefill:
            longest = max(n for _, n in plan.prefill)
            seconds += self.prefill(len(plan.prefill), longest, 0)
        else:
            for live, n in plan.prefill:
                seconds += self.prefill(1, n, live.prefilled)
        if plan.decode:
            seconds += self.decode(max(r.context for r in plan.decode))
        return seconds


class _Cores:
    """The real tokens: each step's programs run on the cores' memory (functional runs)."""

    def __init__(self, model, max_num_seqs: int, params: SamplingParams, eos: set[int]):
        self.model, self.executor, self.slots = model, model.executor, max_num_seqs
        self.params, self.eos = params, eos

    def step(self, plan: StepPlan) -> None:
        for live, n in plan.prefill:  # one slot at a time: the same rows as the request alone
            lo = live.prefilled
            ids = np.asarray(live.request.prompt[lo : lo + n], dtype=np.int64)
            inputs = StepInputs(
                ids, np.arange(lo, lo + n, dtype=np.int64), np.array([lo]), np.array([n]), 1, n, first_slot=live.slot
            )
            logits = self.executor.step(inputs)
            if lo + n == live.request.prompt_tokens:
                self._take(live, logits[0])
        if plan.decode:
            b = self.slots
            ids, positions, valid = np.zeros(b, np.int64), np.zeros(b, np.int64), np.zeros(b, np.int64)
            for live in plan.decode:
                ids[live.slot], positions[live.slot], valid[live.slot] = live.tokens[-1], live.context - 1, 1
            logits = self.executor.step(StepInputs(ids, positions, positions.copy(), valid, b, 1))
            for live in plan.decode:
                self._take(live, logits[live.slot])

    def _take(self, live: Live, row: np.ndarray) -> None:
        if not np.isfinite(row).all():
            raise NumericalError(
                f"the logits of request {live.request.id} hold NaN or infinity: an activation overflowed "
                "or the checkpoint holds such values; check its weights, or try a wider dtype"
            )
        token = int(choose(row[None, :], self.params, live.rng)[0])
        live.tokens.append(token)
        if token in self.eos:
            live.stopped = True


@one_run_at_a_time("model")
def serve(
    model,
    requests: Sequence[Request],
    *,
    scheduler: str | Scheduler = "continuous",
    max_num_seqs: int = 8,
    chunk_size: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eos: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ServeResult:
    """Serve `requests` on `model`'s device (see the module doc); functional unless the model
    was loaded timing-only. `progress(n)` is called as n more requests finish."""
    policy = make_scheduler(scheduler)
    function("progress", progress, WorkloadError, "(requests finished)", takes=1)
    flag("stop_at_eos", stop_at_eos, WorkloadError)
    if chunk_size is not None and not getattr(policy, "takes_chunks", True):
        raise WorkloadError(
            f"chunk_size={chunk_size!r} is the chunked scheduler's prompt tokens per step; "
            f"scheduler={policy.name!r} prefills whole prompts"
        )
    functional = not model.timing_only
    requests = _checked(model, requests, max_num_seqs, chunk_size, functional)
    params = SamplingParams(temperature, top_k, top_p, 0)
    if model.batch != max_num_seqs or model.prefill_batch != 1 or model.all_logits:
        model.session(max_num_seqs, False, prefill_batch=1)
    # A slot's cache pages are its own (batch-major) and stay committed once written: at most the
    # longest requests, one a slot, spread over the slots as the check counts them.
    longest = sorted((r.prompt_tokens + r.output_tokens for r in requests), reverse=True)[:max_num_seqs]
    written = f"the {len(longest)} longest requests ({sum(longest)} positions)" if len(longest) > 1 else None
    model.check_host(math.ceil(sum(longest) / max_num_seqs), written=written)
    clock = _Clock(model, max_num_seqs, params.gathered)
    eos = set(model.graph.meta.get("eos_token_ids", ())) if stop_at_eos else set()
    cores = _Cores(model, max_num_seqs, params, eos) if functional else None
    state = ServerState(max_num_seqs, chunk_size)
    pending = deque(Live(r) for r in requests)
    if functional:
        for live in pending:
            live.rng = np.random.default_rng(live.request.seed)
    log, served = StepLog(), []
    while pending or state.waiting or state.running:
        while pending and pending[0].request.arrival <= state.clock:
            state.waiting.append(pending.popleft())
        plan = policy.plan(state)
        if not plan:
            if not pending:
                raise WorkloadError(
                    f"scheduler {policy.name!r} left {len(state.waiting)} waiting request(s) unscheduled "
                    "with nothing running"
                )
            state.clock = max(state.clock, pending[0].request.arrival)
            continue
        _check_plan(plan, state, policy.name)
        seconds = clock.step(plan)
        if cores is not None:
            cores.step(plan)
        start = state.clock
        state.clock += seconds
        finished = _advance(plan, state)
        served += finished
        if progress and finished:
            progress(len(finished))
        kv = sum(r.context for r in state.running)
        log.add(start, seconds, len(plan.decode), sum(n for _, n in plan.prefill), len(state.running),
                len(state.waiting), kv)  # fmt: skip
    served.sort(key=lambda r: (r.request.arrival, r.request.id))
    return ServeResult(
        served, log, policy.name, max_num_seqs, chunk_size, functional, _memory(model, max_num_seqs),
        _device(model), {"name": model.checkpoint.name, "tp": model.tp, "dtype": model.dtype,
                         "max_context": model.max_context},
        dict(clock.programs),
    )  # fmt: skip


def _advance(plan: StepPlan, state: ServerState) -> list[Live]:
    """Apply a step that has just ended at `state.clock`; the requests it finished."""
    now, finished = state.clock, []
    for live, n in plan.prefill:
        live.prefilled += n
        if not live.prefilling:
            live.generated = 1
            live.first_token = now
    for live in plan.decode:
        live.generated += 1
    for live, _ in plan.prefill:
        if live.first_token == now and live.done:
            finished.append(live)
    finished += [live for live in plan.decode if live.done]
    for live in finished:
        live.finished = now
        state.release(live)
    return finished


def _check_plan(plan: StepPlan, state: ServerState, name: str) -> None:
    """A plan from a (possibly user-written) scheduler that the server can run."""
    holding = {id(r) for r in state.running}
    for live, n in plan.prefill:
        if id(live) not in holding or not live.prefilling or not 1 <= n <= live.request.prompt_tokens - live.prefilled:
            raise WorkloadError(
                f"scheduler {name!r} asked to prefill {n} token(s) of request {live.request.id}, which holds "
                f"{'a slot' if id(live) in holding else 'no slot'} and has {live.prefilled} of "
                f"{live.request.prompt_tokens} prompt tokens cached"
            )
    for live in plan.decode:
        if id(live) not in holding or live.prefilling or live.done:
            raise WorkloadError(f"scheduler {name!r} asked request {live.request.id} to decode before its prefill")
    if len({id(r) for r in plan.decode}) != len(plan.decode):
        raise WorkloadError(f"scheduler {name!r} decodes a request twice in one step")


def check_slots(max_num_seqs, chunk_size) -> None:
    """The server's sequence slots and prefill chunk (None: whole prompts), as `serve` takes
    them; the command line asks before it loads the model."""
    whole("max_num_seqs", max_num_seqs, 1, WorkloadError)
    whole("chunk_size", chunk_size, 1, WorkloadError, optional=True)


def _checked(
    model, requests: Sequence[Request], max_num_seqs: int, chunk_size: int | None, functional: bool
) -> list[Request]:
    check_slots(max_num_seqs, chunk_size)
    if isinstance(requests, str | bytes) or not isinstance(requests, Iterable):
        raise WorkloadError(f"requests={requests!r:.60} must be a list of serving.Request (read_workload, synthetic)")
    requests = list(requests)
    if not requests:
        raise WorkloadError("the workload holds no requests")
    for r in requests:
        _check_request(r)
    check_unique_ids(requests)
    vocab, out = model.graph.vocab_size, []
    for r in sorted(requests, key=lambda r: r.arrival):
        needed = r.prompt_tokens + r.output_tokens
        if needed > model.max_context:
            raise WorkloadError(
                f"request {r.id} needs {r.prompt_tokens} prompt + {r.output_tokens} output = {needed} positions, "
                f"but the model was loaded with max_context={model.max_context}"
            )
        try:
            model.buckets.check(min(r.prompt_tokens, chunk_size or r.prompt_tokens), needed - 1)
        except GenerationError as exc:
            raise WorkloadError(f"request {r.id}: {exc}") from None
        if r.prompt is None:
            r = _with_prompt(r, vocab) if functional else r
        elif not _ids_below(r.prompt, r.prompt_tokens, vocab):
            raise WorkloadError(
                f"request {r.id}: its prompt must be {r.prompt_tokens} ids below {vocab}, not {r.prompt!r:.60}"
            )
        out.append(r)
    return out


def _ids_below(prompt, length: int, vocab: int) -> bool:
    if isinstance(prompt, str | bytes) or not isinstance(prompt, Sequence | np.ndarray) or len(prompt) != length:
        return False
    return all(isinstance(t, Integral) and not isinstance(t, bool) and 0 <= t < vocab for t in prompt)


def _check_request(r) -> None:
    """A request built in Python as read_workload checks a file's line (a NaN arrival would never come)."""
    if not isinstance(r, Request):
        raise WorkloadError(f"the workload holds {r!r:.60}; give serving.Request objects (read_workload, synthetic)")
    arrival = r.arrival
    if isinstance(arrival, bool) or not isinstance(arrival, Real) or not (math.isfinite(arrival) and arrival >= 0):
        raise WorkloadError(f"request {r.id!r}: arrival={arrival!r} must be a time in seconds, 0 or later")
    if arrival > LATEST_ARRIVAL:
        raise WorkloadError(f"request {r.id!r}: {late_arrival(f'arrival={arrival!r} s')}")
    for name, low in (("id", 0), ("prompt_tokens", 1), ("output_tokens", 1), ("seed", 0)):
        value = getattr(r, name)
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise WorkloadError(f"request {r.id!r}: {name}={value!r} must be a whole number of at least {low}")


def _with_prompt(r: Request, vocab: int) -> Request:
    """A request given prompt ids of its length, drawn from its id (the same ids every run)."""
    ids = np.random.default_rng(r.id).integers(0, vocab, size=r.prompt_tokens)
    return replace(r, prompt=tuple(int(i) for i in ids))


def _memory(model, slots: int) -> dict:
    plan = model.plan
    worst = max(range(model.cores), key=lambda c: sum(plan.per_core(c).values()))
    spec = model.device.spec.core
    return {
        "core": worst,
        "by_kind": plan.per_core(worst),
        "kv_bytes_per_position": plan.kv_cache[worst] / (slots * model.max_context),
        "kv_kind": plan.kv_kind,
        "capacity": spec.offchip_bytes or spec.tile_memory_bytes,
    }


def _device(model) -> dict:
    return {"name": model.device.name, "cores": model.cores}
