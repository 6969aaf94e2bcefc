"""Run a `Schedule`: on the discrete-event fabric, or on the closed-form analytic fabric.

One interpreter, `_stream`, runs a stream of steps over any `Transport` (device/fabric.py)
and moves whatever the buffers hold (real numbers, `None` for timing only, contribution
counts for the symbolic proof, or a `Recording`); two drivers make time pass:
- `run_des`: one SimPy process per stream on a `Fabric`; links queue; faults apply.
- `run_analytic`: no events; each stream keeps a clock; a transfer takes its route's
  idle-fabric time. Streams run in turn until each waits for a message not yet sent.
Reducing a received message costs `max(0, gamma - beta_route)` per byte beyond its arrival
(it streams in); a local reduction costs `gamma` per byte; local copies are free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tilesim.collectives.replay import compile_moves
from tilesim.collectives.replay import replay as replay_compiled
from tilesim.collectives.schedule import Local, Recv, Schedule, Send
from tilesim.device.analytic import AnalyticFabric
from tilesim.device.fabric import Fabric, TransferRecord, Transport
from tilesim.errors import CollectiveTimeout

Buffers = list[dict[str, np.ndarray] | None]
Combine = Callable[..., np.ndarray]  # (local, incoming, out=None): a ufunc of two arrays


class _Direct:
    """The data path that moves the bytes as the steps run (real arrays, None for timing
    only, or contribution counts for the symbolic proof)."""

    def __init__(self, buffers: Buffers):
        self.buffers = buffers
        # `in` is never written (schedule.py): where it shares no bytes with `out` or `tmp`
        # (not in place), a message from it needs no snapshot. A direct all-reduce of 64 MiB on
        # 8 cores sends 56 of them: half its run went to copying them.
        self._input_kept = [
            bufs is not None and not any(np.may_share_memory(bufs["in"], bufs[b]) for b in ("out", "tmp") if b in bufs)
            for bufs in buffers
        ]

    def copies(self, core: int, step: Send) -> bool:
        """Whether the transport must snapshot the payload: the sender may write its buffer after sending."""
        return not (step.buf == "in" and self._input_kept[core])

    def payload(self, core: int, step: Send) -> np.ndarray | None:
        bufs = self.buffers[core]
        return None if bufs is None else bufs[step.buf][step.lo : step.hi]

    def received(self, core: int, step: Recv, data: np.ndarray | None, combine: Combine) -> None:
        bufs = self.buffers[core]
        if bufs is None or data is None:
            return
        target = bufs[step.buf][step.lo : step.hi]
        if step.reduce:  # in place: a temporary of a 64 MiB message cost more in page faults than the sum
            combine(target, data, out=target)
        else:
            target[...] = data

    def local(self, core: int, step: Local, combine: Combine) -> None:
        views = _local_views(self.buffers[core], step)
        if views:
            dst, src = views
            if step.kind == "copy":
                dst[...] = src
            else:
                combine(dst, src, out=dst)  # numpy buffers overlapping views itself: the same bits


class Recording:
    """A data path that records a schedule's data moves instead of doing them.

    Running a schedule once on a Recording (with `run_analytic`) yields `moves`: in an order
    that respects every dependency, `(kind, dst, src)` with kind "copy" or "reduce", over
    views of the real buffers and of one staging array per message. Replaying them is the
    schedule's data path without the interpreter: same operations, same order, same bits.
    """

    def copies(self, core: int, step: Send) -> bool:
        return False  # the recorded moves keep the staging arrays they name

    def __init__(self, buffers: list[dict[str, np.ndarray]]):
        self.buffers = buffers
        self.moves: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._compiled = None  # the moves as one loop (replay.py), or False if they cannot be

    def replay(self, combine: Combine) -> None:
        if combine is np.add:  # the usual sum: one compiled loop over the moves (replay.py), same bits
            if self._compiled is None:
                arrays = [a for bufs in self.buffers if bufs for a in bufs.values()]
                scratch = [bufs["tmp"] for bufs in self.buffers if bufs and "tmp" in bufs]  # the schedule's own
                self._compiled = compile_moves(self.moves, arrays, scratch) or False
            if self._compiled:
                replay_compiled(self._compiled)
                return
        for kind, dst, src in self.moves:
            if kind == "copy":
                dst[...] = src
            else:
                combine(dst, src, out=dst)

    def payload(self, core: int, step: Send) -> np.ndarray:
        source = self.buffers[core][step.buf][step.lo : step.hi]
        staging = np.empty_like(source)
        self.moves.append(("copy", staging, source))
        return staging

    def received(self, core: int, step: Recv, data: np.ndarray, combine: Combine) -> None:
        target = self.buffers[core][step.buf][step.lo : step.hi]
        self.moves.append(("reduce" if step.reduce else "copy", target, data))

    def local(self, core: int, step: Local, combine: Combine) -> None:
        views = _local_views(self.buffers[core], step)
        if views:
            self.moves.append((step.kind, *views))


def _local_views(bufs: dict[str, np.ndarray] | None, step: Local) -> tuple[np.ndarray, np.ndarray] | None:
    """(dst, src) of a local step, or None when there is nothing to do (no data, no
    elements, or a copy in place: `in` is `out`)."""
    if bufs is None or step.count == 0:
        return None
    dst = bufs[step.dst][step.dst_lo : step.dst_lo + step.count]
    src = bufs[step.src][step.src_lo : step.src_lo + step.count]
    if step.kind == "copy" and dst.ctypes.data == src.ctypes.data:
        return None
    return dst, src


def _data_path(buffers: Buffers | Recording) -> _Direct | Recording:
    return buffers if isinstance(buffers, Recording) else _Direct(buffers)


@dataclass
class Run:
    """When each core finished (seconds after the start) and what crossed the fabric."""

    finish: list[float]
    transfers: list[TransferRecord] = field(default_factory=list)

    @property
    def time(self) -> float:
        return max(self.finish, default=0.0)


def _recv_extra(topology, core: int, step: Recv, itemsize: int, gamma: float) -> float:
    if not step.reduce:
        return 0.0
    route = topology.route(step.peer, core)
    beta = 1.0 / min(link.bandwidth for link in route) if route else 0.0
    return (step.hi - step.lo) * itemsize * max(0.0, gamma - beta)


def _local_cost(step: Local, itemsize: int, gamma: float) -> float:
    return step.count * itemsize * gamma if step.kind == "reduce" else 0.0


def _streams(schedule: Schedule) -> list[tuple[int, list]]:
    """(core, steps) for every channel of every core, in core then channel order."""
    out = []
    for core, steps in enumerate(schedule.steps):
        channels = sorted({s.ch for s in steps}) or [0]
        for ch in channels:
            out.append((core, [s for s in steps if s.ch == ch]))
    return out


class _Recv:
    """What a stream waits for: the message of `step` (a Recv) to arrive."""

    __slots__ = ("step",)

    def __init__(self, step: Recv):
        self.step = step


def _stream(core: int, steps: list, transport: Transport, data: _Direct | Recording, combine: Combine,
            itemsize: int, gamma: float, pc: list[int], k: int):  # fmt: skip
    """The one interpreter of a stream of steps, over any `Transport`. It yields what it waits
    for (a `_Recv`, answered with the received payload; a number of seconds to spend) and
    returns the sends it posted (what `send` returned for each); its driver makes time pass."""
    sent = []
    for step in steps:
        if isinstance(step, Send):
            nbytes = (step.hi - step.lo) * itemsize
            payload = data.payload(core, step)
            sent.append(transport.send(core, step.peer, step.tag, payload, nbytes, copy=data.copies(core, step)))
        elif isinstance(step, Recv):
            payload = yield _Recv(step)
            extra = _recv_extra(transport.topology, core, step, itemsize, gamma)
            if extra:
                yield extra
            data.received(core, step, payload, combine)
        else:
            cost = _local_cost(step, itemsize, gamma)
            if cost:
                yield cost
            data.local(core, step, combine)
        pc[k] += 1
    return sent


def run_analytic(
    schedule: Schedule, fabric: AnalyticFabric, buffers: Buffers, combine: Combine, itemsize: int, gamma: float
) -> Run:
    """Drive `_stream` with closed-form transfer times: each stream keeps a clock, and streams
    run in turn until each waits for a message not yet sent. Raises CollectiveTimeout on a deadlock."""
    streams = _streams(schedule)
    data = _data_path(buffers)
    pc = [0] * len(streams)
    clock = [0.0] * len(streams)
    finish = [0.0] * schedule.p
    # per stream: [generator, the receive it is blocked on (or None), what to send it next]
    state = {
        k: [_stream(core, steps, fabric, data, combine, itemsize, gamma, pc, k), None, None]
        for k, (core, steps) in enumerate(streams)
    }
    while state:
        progress = False
        for k in list(state):
            gen, wait, answer = state[k]
            core, before = streams[k][0], pc[k]
            ended = False
            while True:
                if wait is not None:
                    got = fabric.recv(core, wait.step.peer, wait.step.tag)
                    if got is None:  # not sent yet: this stream waits for a later round
                        break
                    arrival, answer = got
                    clock[k] = max(clock[k], arrival)
                    wait, progress = None, True
                fabric.now = clock[k]
                try:
                    yielded = gen.send(answer)
                except StopIteration as done:
                    finish[core] = max(finish[core], clock[k], *(done.value or []))
                    ended = True
                    break
                answer = None
                if isinstance(yielded, _Recv):
                    wait = yielded
                else:
                    clock[k] += yielded
            if ended:
                del state[k]
                progress = True
            else:
                state[k] = [gen, wait, answer]
            progress = progress or pc[k] != before
        if not progress:
            raise CollectiveTimeout(_deadlock_message(streams, pc))
    return Run(finish)


def run_des(
    schedule: Schedule,
    fabric: Fabric,
    buffers: Buffers,
    combine: Combine,
    itemsize: int,
    gamma: float,
    timeout: float,
    progress: Callable[[int, int], None] | None = None,
) -> Run:
    """Drive `_stream` on the SimPy fabric, one process per stream. Raises FabricFault from the
    fabric, or CollectiveTimeout if some core has not finished `timeout` simulated seconds
    after the start. `progress(steps done, steps in all)` is called as the run goes (a large
    direct all-reduce is millions of events)."""
    env = fabric.env
    start = env.now
    streams = _streams(schedule)
    data = _data_path(buffers)
    finish = [0.0] * schedule.p
    pc = [0] * len(streams)
    records: list[TransferRecord] = []
    user_hook = fabric.on_transfer

    def hook(record: TransferRecord) -> None:
        records.append(record)
        if user_hook:
            user_hook(record)

    fabric.on_transfer = hook

    def process(k: int, core: int, steps: list):
        gen = _stream(core, steps, fabric, data, combine, itemsize, gamma, pc, k)
        answer = None
        while True:
            try:
                yielded = gen.send(answer)
            except StopIteration as done:
                pending = done.value or []
                break
            if isinstance(yielded, _Recv):
                answer = yield fabric.recv(core, yielded.step.peer, yielded.step.tag)
            else:
                answer = None
                yield env.timeout(yielded)
        if pending:
            yield env.all_of(pending)
        finish[core] = max(finish[core], env.now - start)

    processes = [env.process(process(k, core, steps)) for k, (core, steps) in enumerate(streams)]
    try:
        if progress is not None:
            _step_with_progress(env, start + timeout, processes, pc, sum(len(steps) for _, steps in streams), progress)
        env.run(until=start + timeout)  # the same events in the same order: the same times to the bit
    finally:
        fabric.on_transfer = user_hook
    if not all(proc.triggered for proc in processes):
        raise CollectiveTimeout(
            f"{schedule.algo} {schedule.op} on {schedule.p} cores did not complete within {timeout:.3g} s of "
            f"simulated time; {_deadlock_message(streams, pc)}"
        )
    return Run(finish, records)


def _step_with_progress(env, end: float, processes: list, pc: list[int], total: int, progress) -> None:
    """Process `env`'s events before `end` one by one, as `env.run(until=end)` would, calling
    `progress` every 4096 of them, until every stream has finished (env.run does the rest)."""
    events = 0
    progress(0, total)
    while env.peek() < end:
        env.step()
        events += 1
        if events % 4096 == 0:
            if all(proc.triggered for proc in processes):
                break
            progress(sum(pc), total)
    progress(sum(pc), total)


def _deadlock_message(streams: list[tuple[int, list]], pc: list[int]) -> str:
    waiting = []
    for k, (core, steps) in enumerate(streams):
        if pc[k] < len(steps):
            step = steps[pc[k]]
            if isinstance(step, Recv):
                waiting.append(f"core {core} waits for step {step.tag[0]} from core {step.peer}")
            else:
                waiting.append(f"core {core} is at step {pc[k]}")
    shown = "; ".join(waiting[:4]) + (f"; and {len(waiting) - 4} more" if len(waiting) > 4 else "")
    return f"stuck: {shown or 'messages sent were never received'}"


def record(
    schedule: Schedule, buffers: list[dict[str, np.ndarray]], fabric: AnalyticFabric, itemsize: int
) -> Recording:
    """The data moves of `schedule` over `buffers`, ready to replay (see `Recording`)."""
    recording = Recording(buffers)
    run_analytic(schedule, fabric, recording, lambda a, b: a, itemsize, 0.0)
    return recording
