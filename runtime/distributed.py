"""Emulated cores hosted on Ray actors: each actor holds some lanes' cores (their arenas and
weight slices, read by the actor itself from the checkpoint), and a step runs on all actors
at once (`tilesim.load(..., cluster="auto")`, `--ray auto`).

The driver keeps the model's plan and its step timer (so simulated times and traces are the
single process's); the actors keep the numbers. Each actor runs the same Program with a
partial executor (`Executor(lanes=...)`): its lanes' kernels, and at every collective a
`Boundary`. A step is a chain of actor calls, one per stretch between two collectives,
all submitted by the driver at once: the call for stretch k takes, through Ray's object
store, every actor's rows of collective k - 1 (each actor hands over the input rows of its
lanes, and the others write them into their copies of those lanes' buffers), runs the
collective's recorded schedule over all lanes exactly as one process does, then its lanes'
kernels up to collective k, and returns its rows of that one. The last stretch returns the
lanes' logits, which the driver concatenates. So the driver waits once per step, each
collective costs one exchange between the actors, and the arithmetic (and the order of every
sum) is the single process's: tokens and logits are bit-identical.

What moves per collective: every actor's input rows to every other actor (an all-gather of
the lanes' parts), not the schedule's point-to-point messages; the schedule's moves are
replayed inside each actor. An actor that dies stops the run with `HostLost` naming its
cores. Mixtures of experts are not hosted on actors yet (their routing feeds the timer).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesim.collectives.schedule import bounds
from tilesim.errors import ConfigError, HostLost, OutOfTileMemory
from tilesim.runtime.execute import CROSSING, Boundary
from tilesim.runtime.program import StepInputs
from tilesim.units import fmt_bytes

STEP_TIMEOUT_S = 3600  # the longest one step may take on the actors
# OpenMP's threads (numba's threading layer) spin for a while after each parallel region by
# default; at the worker's priority that spin starved the actor's own lowered thread that
# hands the stretches over (a decode step 2.5-6x slower on 2-4 actors). Passive: they sleep.
ACTOR_ENV = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}


@dataclass(frozen=True)
class Placement:
    """Which lanes each actor holds (a lane is one core per pipeline stage)."""

    lanes: tuple[tuple[int, ...], ...]
    pp: int
    tp: int

    def cores(self, actor: int) -> list[int]:
        return sorted(stage * self.tp + lane for lane in self.lanes[actor] for stage in range(self.pp))


def place_lanes(tp: int, pp: int, actors: int | None, cores_per_actor: int | None) -> Placement:
    """Lanes split evenly over `actors` (default: one per host), or `cores_per_actor` cores
    (whole lanes: a multiple of the pipeline stages) each."""
    if cores_per_actor is not None:
        check_cores_per_actor(cores_per_actor, pp)
        actors = -(-tp // (cores_per_actor // pp))
    actors = max(1, min(actors or 1, tp))
    b = bounds(tp, actors)
    return Placement(tuple(tuple(range(b[i], b[i + 1])) for i in range(actors)), pp, tp)


def check_cores_per_actor(cores_per_actor: int | None, pp: int) -> None:
    """Refuse a count that is not whole lanes (one core of each of the `pp` stages)."""
    if cores_per_actor is None:
        return
    if not isinstance(cores_per_actor, int) or isinstance(cores_per_actor, bool) or cores_per_actor < 1:
        raise ConfigError(f"cores_per_actor={cores_per_actor!r} must be a whole number of at least 1")
    if cores_per_actor % pp:
        raise ConfigError(
            f"cores_per_actor={cores_per_actor} with {pp} pipeline stages: an actor holds whole lanes (one core "
            f"of every stage), so use a multiple of {pp}"
        )


def check_budget(plan, placement: Placement, budget: int | None) -> None:
    """Raise OutOfTileMemory if an actor's cores need more than its memory budget (the
    arenas' planned bytes: weights, KV cache, activations and the runtime's own)."""
    if budget is None:
        return
    for actor in range(len(placement.lanes)):
        cores = placement.cores(actor)
        need = sum(sum(plan.per_core(c).values()) for c in cores)
        if need > budget:
            raise OutOfTileMemory(
                f"actor {actor} would hold cores {_span(cores)}, whose memory is {fmt_bytes(need)}, more than its "
                f"actor_memory={fmt_bytes(budget)}; use more actors (a smaller `cores_per_actor`) or a larger budget"
            )


def _span(cores: list[int]) -> str:
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 2 and cores == list(range(cores[0], cores[-1] + 1)) else str(cores)


class CoreHost:
    """One actor: the model's Program and the arenas of its lanes' cores (a Ray actor class)."""

    def __init__(self, source: str, device_spec, cores: int, tp: int, lanes: list[int], kwargs: dict):
        # The work runs on a thread of its own at the worker's priority; the thread Ray calls
        # in then lowers itself (`segment`), since between stretches it spins on its input
        # channel, which took the host's cores from the other actors' kernels.
        self._work = ThreadPoolExecutor(1, thread_name_prefix="tilesim-cores")
        self._work.submit(self._load, source, device_spec, cores, tp, lanes, kwargs).result()
        self.lanes = lanes
        self._at = 0  # the next op of the step in progress
        self._lowered = False

    def _load(self, source: str, device_spec, cores: int, tp: int, lanes: list[int], kwargs: dict) -> None:
        from tilesim.api import open_source
        from tilesim.device import Device
        from tilesim.runtime.model import Model

        checkpoint = open_source(source)
        device = Device(device_spec, cores=cores)
        self.model = Model(checkpoint, device, tp, lanes=lanes, **kwargs)

    def ready(self) -> bool:
        return True

    def session(self, batch: int, all_logits: bool, prefill_batch: int | None) -> None:
        self._work.submit(self.model.session, batch, all_logits, prefill_batch).result()

    def segment(self, k: int, inputs: StepInputs, *parts: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Stretch k of a step: complete collective k - 1 with every actor's `parts`, run up
        to collective k, return this actor's lanes' rows of it."""
        if not self._lowered:
            _lowest_priority()
            self._lowered = True
        return self._work.submit(self._stretch, k, inputs, parts).result()

    def _stretch(self, k: int, inputs: StepInputs, parts: tuple[dict[int, np.ndarray], ...]) -> dict[int, np.ndarray]:
        ex = self.model.executor
        ops = ex.ops
        if k == 0:
            self._at = 0
        else:
            boundary = ops[self._at]
            m = boundary.rows(ex.sp, inputs)
            for part in parts:
                for lane, rows in part.items():
                    if lane not in self.lanes:
                        ex.acts[lane][boundary.value][:m] = rows
            boundary.op(inputs)
            self._at += 1
        while self._at < len(ops):
            op = ops[self._at]
            if isinstance(op, Boundary):
                m = op.rows(ex.sp, inputs)
                return {lane: ex.acts[lane][op.value][:m].copy() for lane in self.lanes}
            op(inputs)
            self._at += 1
        raise RuntimeError("a step's last stretch ends at the logits gather")


class RemoteExecutor:
    """The driver's side: the executor interface (`step(inputs) -> logits`) over the actors."""

    def __init__(self, model, ray, actors: list, placement: Placement, started: bool):
        self.ray, self.actors, self.placement, self.started = ray, actors, placement, started
        self.program = model.program
        self._crossing = [Boundary(s, None) for s in model.program.steps if s.kind in CROSSING and _runs(s, model.tp)]
        self.boundaries = len(self._crossing)
        self.logits: np.ndarray | None = None
        self.routing: dict[int, np.ndarray] = {}
        self.step_routing: dict[int, np.ndarray] = {}
        self.exchanged: dict[int, list] = {}
        self.calls = 0  # actor calls, all steps
        self.bytes_moved = 0  # bytes that went through the object store between actors, all steps
        self.steps = 0
        self.graph = None  # the compiled step (`compile`), or None: one actor call per stretch
        self._waiter: ThreadPoolExecutor | None = None  # where the driver waits for a compiled step

    def compile(self) -> bool:
        """The step as a Ray compiled graph (shared-memory channels between the actors, tens
        of microseconds a hop instead of a task's milliseconds); False if Ray cannot."""
        try:
            from ray.dag import InputNode, MultiOutputNode
            from ray.dag.context import DAGContext

            context = DAGContext.get_current()  # a long prefill of a large model takes longer than Ray's 10 s
            context.get_timeout = max(context.get_timeout, STEP_TIMEOUT_S)
            context.submit_timeout = max(context.submit_timeout, STEP_TIMEOUT_S)

            with InputNode() as inputs:
                parts: list = []
                for k in range(self.boundaries):
                    parts = [actor.segment.bind(k, inputs, *parts) for actor in self.actors]
                graph = MultiOutputNode(parts)
            self.graph = graph.experimental_compile(_max_inflight_executions=1)
            self._waiter = ThreadPoolExecutor(1, initializer=_lowest_priority, thread_name_prefix="tilesim-wait")
            return True
        except Exception:  # an older or stricter Ray: one actor call per stretch then
            self.graph = None
            return False

    def step(self, inputs: StepInputs) -> np.ndarray:
        if self.graph is not None:
            run = self._waiter.submit(lambda: self.ray.get(self.graph.execute(inputs)))
            last = self._guard(run.result)
        else:
            ref = self.ray.put(inputs)
            parts: list = []
            for k in range(self.boundaries):
                parts = [actor.segment.remote(k, ref, *parts) for actor in self.actors]
            last = self._get(parts)
        self.calls += self.boundaries * len(self.actors)
        self.steps += 1
        pieces = {lane: rows for part in last for lane, rows in part.items()}
        self.bytes_moved += self._moved(inputs)
        self.logits = np.concatenate([pieces[c] for c in range(len(pieces))], axis=1)
        return self.logits

    def _moved(self, inputs: StepInputs) -> int:
        """Bytes one step moves between processes: each collective's rows of every lane to
        every other actor, and the logits to the driver."""
        sp, others = self.program.sp, len(self.actors) - 1
        total = 0
        for boundary in self._crossing:
            nbytes = boundary.rows(sp, inputs) * sum(sp.widths[boundary.value]) * 4
            total += nbytes if boundary.step.kind == "gather_logits" else nbytes * others
        return total

    def session(self, batch: int, all_logits: bool, prefill_batch: int | None) -> None:
        self._get([a.session.remote(batch, all_logits, prefill_batch) for a in self.actors])

    def _get(self, refs: list) -> list:
        return self._guard(lambda: self.ray.get(refs))

    def _guard(self, run):
        """`run()`, with a lost actor or node raised as HostLost naming the cores it held."""
        from tilesim.fanout import lost_errors, raise_cause

        lost = lost_errors(self.ray, "RayActorError", "ActorDiedError", "RayChannelError", "RayChannelTimeoutError")
        try:
            return run()
        except lost as exc:
            dead = self._dead()
            held = "; ".join(f"actor {i} held cores {_span(self.placement.cores(i))}" for i in dead) or (
                "the actor that failed is not known"
            )
            raise HostLost(
                f"a Ray actor hosting emulated cores died or its node left the cluster ({type(exc).__name__}): "
                f"{held}; the run stopped (load the model again to rerun it: the tokens are deterministic)"
            ) from None
        except self.ray.exceptions.RayTaskError as exc:
            raise_cause(exc)

    def _dead(self) -> list[int]:
        dead = []
        for i, actor in enumerate(self.actors):
            try:
                self.ray.get(actor.ready.remote(), timeout=10)
            except Exception:
                dead.append(i)
        return dead

    def close(self) -> None:
        if self.graph is not None:
            with contextlib.suppress(Exception):
                self.graph.teardown()
            self.graph = None
        if self._waiter is not None:
            self._waiter.shutdown(wait=False)
            self._waiter = None
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False


def _lowest_priority() -> None:
    """Run the calling thread only when a core would otherwise idle. Reading a compiled
    graph's result spins (sched_yield in a loop) until the actors answer, and Ray starts its
    workers at nice 15: a driver waiting at normal priority took a whole core from the
    actors' kernels on a 2-core host (a decode step 1.8x slower on one actor)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: a plain nice is next best
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _runs(step, tp: int) -> bool:
    """Whether a collective step does anything (an all-reduce on one lane does not)."""
    return not (step.kind == "allreduce" and tp == 1)


def start(model, source: str, address: str, cores_per_actor: int | None, actor_memory: Any, kwargs: dict):
    """Actors for `model`'s lanes on the cluster at `address` ("auto": the one Ray finds, or a
    local one on 127.0.0.1); raises before any actor starts if a budget is exceeded."""
    from tilesim.fanout import connect

    if model.graph.meta.get("moe") or any(n.op == "moe" for n in model.graph.nodes):
        raise ConfigError(
            f"{model.graph.label}: a mixture of experts is not hosted on Ray actors yet; run it in one process"
        )
    check_cores_per_actor(cores_per_actor, model.stages.pp)  # before a cluster starts
    budget = None
    if actor_memory is not None:
        from tilesim.units import parse_quantity

        size = parse_quantity(actor_memory, "bytes", f"actor_memory={actor_memory!r}")
        if not (math.isfinite(size) and size >= 1):
            raise ConfigError(f"actor_memory={actor_memory!r} must be a positive size such as 1GiB")
        budget = int(size)
    ray, started = connect(address)
    try:
        hosts = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        placement = place_lanes(model.tp, model.stages.pp, hosts, cores_per_actor)
        check_budget(model.plan, placement, budget)
        cls = ray.remote(num_cpus=0, scheduling_strategy="SPREAD", max_restarts=0, runtime_env=ACTOR_ENV)(CoreHost)
        actors = [
            cls.remote(source, model.device.spec, model.device.num_cores, model.tp, list(lanes), kwargs)
            for lanes in placement.lanes
        ]
        executor = RemoteExecutor(model, ray, actors, placement, started)
        executor._get([a.ready.remote() for a in actors])
        executor.compile()
    except BaseException:
        if started:
            ray.shutdown()
        raise
    atexit.register(executor.close)
    return executor
