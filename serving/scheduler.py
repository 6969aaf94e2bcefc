"""Schedulers: which requests get a sequence slot, and what the next step runs.

A scheduler sees the server's state (`ServerState`: the clock, the waiting queue in arrival
order, the requests holding slots, the free slots) and returns the next step (`StepPlan`):
prompt tokens to prefill for some requests, and the requests that decode one token. It
admits a waiting request with `state.admit(live)`, which gives it a free slot.

- `static`: a batch is taken from the queue when the device is idle, prefilled as one
  program, and decoded until its last request finishes; only then does the next batch start
  (what `generate` does with a batch).
- `continuous`: free slots are filled from the queue at every step; new requests are
  prefilled whole, one program per request, before the running batch decodes again
  (prefill first, as transformers-neuronx's continuous batching and vLLM's default do).
- `chunked`: like continuous, but a step decodes the running batch and prefills up to
  `chunk_size` prompt tokens beside it, so a long prompt does not stall the others' tokens.

A new policy is a class with `name` and `plan(state)`, registered with `register_scheduler`.
A policy that prefills whole prompts says so with `takes_chunks = False`, and `serve` then
refuses a `chunk_size` it would ignore (a policy without the attribute may read
`state.chunk_size`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tilesim.serving.workload import Request, WorkloadError


@dataclass(eq=False)
class Live:
    """A request in the server: its slot, how much of its prompt is cached, what it made."""

    request: Request
    slot: int | None = None
    prefilled: int = 0  # prompt tokens in the cache
    generated: int = 0  # output tokens made (the last one not yet in the cache)
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    tokens: list[int] = field(default_factory=list)  # functional runs: the ids made
    rng: object = None  # functional runs: the request's own sampling generator
    stopped: bool = False  # functional runs: ended by an end-of-sequence token

    @property
    def prefilling(self) -> bool:
        return self.prefilled < self.request.prompt_tokens

    @property
    def context(self) -> int:
        """Positions a decode step of this request attends to (its new token included)."""
        return self.prefilled + self.generated

    @property
    def done(self) -> bool:
        return self.stopped or self.generated >= self.request.output_tokens


@dataclass
class StepPlan:
    """One step: (request, prompt tokens) to prefill, from what each has cached; requests that
    decode one token. `batched`: the prefills run as one program of all of them."""

    prefill: list[tuple[Live, int]] = field(default_factory=list)
    decode: list[Live] = field(default_factory=list)
    batched: bool = False

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


class ServerState:
    """What a scheduler sees and may change (admissions)."""

    def __init__(self, max_num_seqs: int, chunk_size: int | None):
        self.max_num_seqs, self.chunk_size = max_num_seqs, chunk_size
        self.clock = 0.0
        self.waiting: deque[Live] = deque()
        self.running: list[Live] = []  # holding a slot, in admission order
        self._free = list(range(max_num_seqs))  # kept sorted: the lowest slot first

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def admit(self, live: Live) -> None:
        """Give a waiting request the lowest free slot."""
        if not self._free:
            raise RuntimeError("no free slot: a scheduler admitted more than max_num_seqs requests")
        self.waiting.remove(live)
        live.slot = self._free.pop(0)
        live.admitted = self.clock
        self.running.append(live)

    def release(self, live: Live) -> None:
        self.running.remove(live)
        self._free.append(live.slot)
        self._free.sort()


class Scheduler(Protocol):
    name: str

    def plan(self, state: ServerState) -> StepPlan | None: ...


def _fill(state: ServerState) -> None:
    """Admit waiting requests, first come first served, while slots are free."""
    while state.waiting and state.free_slots:
        state.admit(state.waiting[0])


class StaticBatching:
    name = "static"
    takes_chunks = False

    def plan(self, state: ServerState) -> StepPlan | None:
        if not state.running:
            if not state.waiting:
                return None
            _fill(state)
            return StepPlan(prefill=[(r, r.request.prompt_tokens) for r in state.running], batched=True)
        return StepPlan(decode=list(state.running))


class ContinuousBatching:
    name = "continuous"
    takes_chunks = False

    def plan(self, state: ServerState) -> StepPlan | None:
        _fill(state)
        new = [r for r in state.running if r.prefilling]
        if new:
            return StepPlan(prefill=[(r, r.request.prompt_tokens - r.prefilled) for r in new])
        return StepPlan(decode=list(state.running)) if state.running else None


class ChunkedPrefill:
    name = "chunked"
    takes_chunks = True

    def plan(self, state: ServerState) -> StepPlan | None:
        _fill(state)
        budget = state.chunk_size or 512
        plan = StepPlan(decode=[r for r in state.running if not r.prefilling])
        for r in state.running:
            if budget <= 0:
                break
            if r.prefilling:
                n = min(budget, r.request.prompt_tokens - r.prefilled)
                plan.prefill.append((r, n))
                budget -= n
        return plan or None


SCHEDULERS: dict[str, Callable[[], Scheduler]] = {
    "static": StaticBatching,
    "continuous": ContinuousBatching,
    "chunked": ChunkedPrefill,
}


def register_scheduler(name: str, factory: Callable[[], Scheduler]) -> None:
    """Make a policy available by name (`serve-sim --scheduler NAME`, `simulate(scheduler=NAME)`)."""
    SCHEDULERS[name] = factory


def make_scheduler(name_or_scheduler: str | Scheduler) -> Scheduler:
    if not isinstance(name_or_scheduler, str):
        if not callable(getattr(name_or_scheduler, "plan", None)):
            raise WorkloadError(f"scheduler {name_or_scheduler!r} has no plan(state) method")
        return name_or_scheduler
    factory = SCHEDULERS.get(name_or_scheduler)
    if factory is None:
        raise WorkloadError(f"unknown scheduler {name_or_scheduler!r}; use one of {', '.join(SCHEDULERS)}")
    return factory()
