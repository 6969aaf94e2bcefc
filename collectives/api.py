"""Run one collective on a device: pick the algorithm, place the buffers, move the bytes, time it.

    result = run_collective("allreduce", inputs, device=Device("trn1", cores=8), algo="ring")
    result.outputs, result.time_s, result.predicted_time_s, result.busbw

Each core's buffers live in its own memory (the activations region when they fit, else
off-chip); what a core ends with is what arrived over the fabric. `algo="auto"` runs the
algorithms that can do the operation through the discrete-event fabric without data, each
stopped once it is slower than the fastest so far, and keeps the fastest (cached per
fabric, size and core count); the result says which ran.
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tilesim.collectives import (
    binomial_tree,
    direct,
    double_binary_tree,
    halving_doubling,
    hierarchical,
    pairwise,
    reference,
    ring,
)
from tilesim.collectives.cost import AlphaBeta, egress_share, lower_bound, model_for
from tilesim.collectives.execute import run_analytic, run_des
from tilesim.collectives.numerics import dtype_name, dtype_of, reduce_fn, working_dtype
from tilesim.collectives.schedule import Schedule, Send, bounds
from tilesim.device.analytic import AnalyticFabric
from tilesim.device.device import Device
from tilesim.device.fabric import TransferRecord
from tilesim.device.faults import FaultSpec, link_end
from tilesim.device.spec import FabricSpec
from tilesim.device.topology import Topology
from tilesim.errors import CollectiveTimeout, ConfigError
from tilesim.runtime.checks import flag, function, real, whole

OPS = ("allreduce", "reducescatter", "allgather", "broadcast", "alltoall")
ALGORITHMS = {
    "ring": ring,
    "halving_doubling": halving_doubling,
    "binomial_tree": binomial_tree,
    "double_binary_tree": double_binary_tree,
    "direct": direct,
    "hierarchical": hierarchical,
    "pairwise": pairwise,
}


def algorithms_for(op: str, topology: str) -> list[str]:
    """The algorithms that can run `op` on a `topology` fabric, in a fixed order."""
    if op not in OPS:
        raise ConfigError(f"unknown collective {op!r}; use one of {', '.join(OPS)}")
    names = [name for name, module in ALGORITHMS.items() if op in module.OPS]
    return [n for n in names if n != "hierarchical" or topology == "torus2d"]


def build_schedule(op: str, algo: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    """The schedule of `algo` for `op` on p cores and n elements."""
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r}; use one of {', '.join(ALGORITHMS)} or auto")
    module = ALGORITHMS[algo]
    if op not in module.OPS:
        can = ", ".join(algorithms_for(op, "torus2d"))
        raise ConfigError(f"algorithm {algo!r} cannot do {op}; for {op} use one of: {can}")
    if not 0 <= root < max(p, 1):
        raise ConfigError(f"root {root} is not one of the {p} cores")
    schedule = module.build(op, p, n, root=root, itemsize=itemsize)
    if n == 0:  # like NCCL with count 0: nothing to move, done at once
        schedule.steps = [[] for _ in range(p)]
    return schedule


@functools.lru_cache(maxsize=4096)
def schedule_for(op: str, algo: str, p: int, n: int, root: int = 0, itemsize: int = 4) -> Schedule:
    """`build_schedule`, built once per arguments: the timed run and the data run of a
    collective share it (treat it as read-only)."""
    return build_schedule(op, algo, p, n, root, itemsize)


def predict(op: str, algo: str, p: int, n: int, itemsize: int, model: AlphaBeta, root: int = 0) -> float:
    """The closed-form alpha-beta-gamma time of `algo` (see each algorithm's module doc)."""
    return ALGORITHMS[algo].predict(op, p, n, itemsize, model, root)


@dataclass
class CollectiveResult:
    """What one collective did: results per core, simulated and predicted time, the algorithm."""

    op: str
    algo: str
    auto: bool
    cores: int
    n: int
    dtype: str
    reduce_op: str
    root: int
    nbytes: int  # bytes of one core's input vector (the nccl-tests "size")
    time_s: float
    predicted_time_s: float
    lower_bound_s: float
    order: str
    outputs: list[np.ndarray] | None = None
    transfers: list[TransferRecord] = field(default_factory=list)
    finish_s: list[float] = field(default_factory=list)

    @property
    def algbw(self) -> float:
        """Bytes per second of simulated time: size / time (nccl-tests' algbw)."""
        return self.nbytes / self.time_s if self.time_s > 0 else float("inf")

    @property
    def busbw(self) -> float:
        """algbw scaled by what each link must carry (nccl-tests' busbw); 0 where nothing must
        (one core), not the NaN of infinity times 0."""
        share = egress_share(self.op, self.cores)
        return self.algbw * share if share else 0.0

    def as_row(self) -> dict:
        return {
            "op": self.op,
            "algo": self.algo,
            "auto": self.auto,
            "cores": self.cores,
            "bytes": self.nbytes,
            "dtype": self.dtype,
            "time_s": self.time_s,
            # None where nothing took time (one core): JSON has no infinity
            "algbw": self.algbw if self.time_s > 0 else None,
            "busbw": self.busbw if self.time_s > 0 else None,
            "predicted_time_s": self.predicted_time_s,
            "lower_bound_s": self.lower_bound_s,
        }


def buffer_region(device: Device, nbytes_per_core: int) -> str:
    """Where a core keeps collective buffers: with the activations if they fit, else off-chip."""
    preferred = device.spec.placement["activations"]
    region = device.cores[0].memory.regions[preferred]
    if nbytes_per_core <= region.free_bytes or "offchip" not in device.cores[0].memory.regions:
        return preferred
    return "offchip"


# who sees a choice's simulations go: not an argument of `_simulation`, whose result is the
# same whoever watches
_watcher: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar("watcher", default=None)


# (fabric, p, op, algo, n, itemsize, root, gamma) -> (seconds, transfers), oldest first
_runs: dict[tuple, tuple[float, tuple[TransferRecord, ...]]] = {}
_KEPT_RUNS = 4096
_NEVER_S = 1e6  # a run's limit without `within`: past it, a deadlock


def _simulation(
    fabric: FabricSpec,
    p: int,
    op: str,
    algo: str,
    n: int,
    itemsize: int,
    root: int,
    gamma: float,
    within: float = math.inf,
) -> tuple[float, tuple[TransferRecord, ...]] | None:
    """(seconds, transfers) of the collective on an idle fabric without data (cached), or None
    if it takes longer than `within` seconds: then the run stops there and is not kept."""
    from tilesim.device.fabric import Fabric

    key = (fabric, p, op, algo, n, itemsize, root, gamma)
    if key in _runs:
        return _runs[key]
    schedule = schedule_for(op, algo, p, n, root, itemsize)
    try:
        run = run_des(schedule, Fabric(fabric, p), [None] * p, _no_combine, itemsize, gamma, min(within, _NEVER_S),
                      _watcher.get())  # fmt: skip
    except CollectiveTimeout:
        if within >= _NEVER_S:  # not a candidate stopped: a schedule that cannot finish
            raise
        return None
    if len(_runs) >= _KEPT_RUNS:
        del _runs[next(iter(_runs))]
    _runs[key] = (run.time, tuple(run.transfers))
    return _runs[key]


def _no_combine(local, incoming, out=None):
    return local


@functools.lru_cache(maxsize=4096)
def _hops(fabric: FabricSpec, p: int, op: str, algo: str, n: int, itemsize: int, root: int) -> int:
    """The links all of a schedule's messages cross: about the events its simulation takes."""
    route = Topology(fabric, p).route
    steps = schedule_for(op, algo, p, n, root, itemsize).steps
    return sum(len(route(core, s.peer)) for core, mine in enumerate(steps) for s in mine if isinstance(s, Send))


def choose_algorithm(
    device: Device,
    op: str,
    p: int,
    n: int,
    itemsize: int,
    root: int,
    region: str,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """The fastest algorithm for this operation, size, core count and fabric (timing-only runs),
    as the discrete-event fabric times each; ties go to the one `algorithms_for` lists first.

    The candidates run cheapest first (fewest links crossed), and each after the first stops
    once it is slower than the fastest so far: it cannot be chosen. A direct all-reduce over
    128 cores of a ring crosses 64 times the links a tree does; it loses above a few KiB and is
    then stopped early. `progress(steps done, steps in all)` sees each run go, from 0."""
    candidates = algorithms_for(op, device.spec.fabric.topology)
    if p <= 1 or n == 0:
        return candidates[0]
    gamma = model_for(device.spec, p, region).gamma
    fabric = device.spec.fabric.for_message(n * itemsize)
    best: tuple[float, int] | None = None
    token = _watcher.set(progress)
    try:
        for algo in sorted(candidates, key=lambda a: _hops(fabric, p, op, a, n, itemsize, root)):
            # the margin lets a run as fast as the best finish, so that a tie goes by the list
            within = math.inf if best is None else best[0] * (1 + 1e-9) + 1e-15
            run = _simulation(fabric, p, op, algo, n, itemsize, root, gamma, within)
            if run is not None and (best is None or (run[0], candidates.index(algo)) < best):
                best = (run[0], candidates.index(algo))
    finally:
        _watcher.reset(token)
    return candidates[best[1]]


def resolve_algorithm(
    device: Device,
    op: str,
    algo: str,
    n: int,
    itemsize: int,
    root: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """`algo`, or for "auto" the algorithm `run_collective` picks for n elements of `itemsize`
    bytes (`progress` as for `choose_algorithm`)."""
    if algo != "auto":
        return algo
    # before a schedule exists, guess its buffers: in, out and one scratch
    region = buffer_region(device, 3 * n * itemsize)
    return choose_algorithm(device, op, device.num_cores, n, itemsize, root, region, progress)


def simulated_time(
    device: Device, op: str, algo: str, p: int, n: int, itemsize: int, region: str, root: int = 0
) -> float:
    """Seconds one collective takes on an idle device (discrete-event, no data; cached)."""
    return simulate(device, op, algo, p, n, itemsize, region, root)[0]


def simulate(
    device: Device, op: str, algo: str, p: int, n: int, itemsize: int, region: str, root: int = 0
) -> tuple[float, tuple[TransferRecord, ...]]:
    """(seconds, transfers) of one collective on an idle device; transfer times are relative
    to the end of the fixed per-collective overhead. Cached per fabric, operation and size."""
    if p <= 1 or n == 0:
        return 0.0, ()
    gamma = model_for(device.spec, p, region).gamma
    overhead = device.spec.fabric.collective_overhead_s
    fabric = device.spec.fabric.for_message(n * itemsize)
    seconds, transfers = _simulation(fabric, p, op, algo, n, itemsize, root, gamma)
    return overhead + seconds, transfers


def run_collective(
    op: str,
    inputs: list[np.ndarray] | None = None,
    *,
    device: Device,
    algo: str = "auto",
    reduce_op: str = "sum",
    dtype: str | None = None,
    n: int | None = None,
    root: int = 0,
    accumulate: str = "wire",
    in_place: bool = False,
    faults: FaultSpec | None = None,
    fabric: str = "des",
    timeout_s: float | None = None,
    on_transfer=None,
    progress: Callable[[int, int], None] | None = None,
) -> CollectiveResult:
    """Run `op` over `device`'s cores: with `inputs` (one 1-D array per core), or timing only
    with `n` elements of `dtype`. `device` is a Device or a preset name (its cores).
    `progress(steps done, steps in all)` sees a discrete-event run go, and with "auto" first the
    runs that choose the algorithm (each from 0). See the module doc;
    raises FabricFault or CollectiveTimeout."""
    if isinstance(device, str):
        device = Device(device)
    elif not isinstance(device, Device):
        raise ConfigError(f"device={device!r:.60} must be a tilesim.Device or a preset name")
    p = device.num_cores
    whole("root", root, 0, ConfigError)
    whole("n", n, 0, ConfigError, optional=True, maximum=2**50)  # timing only: a petabyte may be asked
    real("timeout_s", timeout_s, ConfigError, low=0.0, open_low=True)
    flag("in_place", in_place, ConfigError)
    if faults is not None and not isinstance(faults, FaultSpec):
        raise ConfigError(f"faults={faults!r:.60} must be a FaultSpec (FaultSpec.parse reads 'drop=0.1,...')")
    function("on_transfer", on_transfer, ConfigError, "(a transfer record)", takes=1)
    function("progress", progress, ConfigError, "(steps done, steps in all)", takes=2)
    if inputs is not None and (isinstance(inputs, str | bytes | np.ndarray) or not isinstance(inputs, Sequence)):
        raise ConfigError(f"inputs={inputs!r:.60} must be a list of 1-D arrays, one per core")
    if inputs is not None and n is not None:
        raise ConfigError("give the inputs, or n for a timing-only run, not both: the inputs' length is n")
    if faults is not None and faults.active and fabric == "analytic":
        raise ConfigError("faults are injected on the discrete-event fabric; use fabric='des' with them")
    if faults is not None:
        _check_fault_links(faults, device)
    if inputs is not None:
        if len(inputs) != p:
            raise ConfigError(f"{op} needs one input per core: got {len(inputs)} for {p} cores")
        inputs = [np.asarray(x) for x in inputs]
        dtype = dtype or dtype_name(inputs[0].dtype)
    dtype = dtype or "fp32"
    data_dtype = dtype_of(dtype)
    work = working_dtype(dtype, accumulate)
    if inputs is not None:
        n = _check_inputs(op, inputs, data_dtype, p)
    if n is None or n < 0:
        raise ConfigError("give the inputs, or the number of elements n for a timing-only run")
    if op == "alltoall" and in_place:
        raise ConfigError("all-to-all cannot run in place: give separate input and output buffers")
    itemsize = work.itemsize
    algo_name = resolve_algorithm(device, op, algo, n, itemsize, root, progress)
    schedule = build_schedule(op, algo_name, p, n, root, itemsize)
    region = buffer_region(device, _buffer_bytes(schedule, itemsize))
    model = model_for(device.spec, p, region, n * itemsize)
    predicted = predict(op, algo_name, p, n, itemsize, model, root)
    combine = reduce_fn(reduce_op)
    blocks, buffers = (
        _place_buffers(device, schedule, inputs, work, in_place, region) if inputs is not None else ([], [None] * p)
    )
    try:
        if fabric == "analytic":
            links = AnalyticFabric(device.spec.fabric.for_message(n * itemsize), p)
            run = run_analytic(schedule, links, buffers, combine, itemsize, model.gamma)
        elif fabric == "des":
            timeout = timeout_s if timeout_s is not None else max(1.0, 1000 * predicted)
            fab = device.fabric(faults=faults, on_transfer=on_transfer, message_bytes=n * itemsize)
            run = run_des(schedule, fab, buffers, combine, itemsize, model.gamma, timeout, progress)
        else:
            raise ConfigError(f"fabric must be 'des' or 'analytic', got {fabric!r}")
        outputs = _collect(schedule, buffers, data_dtype) if inputs is not None else None
    finally:
        for core, block in blocks:
            device.cores[core].memory.free(block)
    overhead = model.overhead if p > 1 and n else 0.0
    nbytes = n * data_dtype.itemsize
    return CollectiveResult(
        op=op,
        algo=algo_name,
        auto=algo == "auto",
        cores=p,
        n=n,
        dtype=dtype,
        reduce_op=reduce_op,
        root=root,
        nbytes=nbytes,
        time_s=run.time + overhead,
        predicted_time_s=predicted,
        lower_bound_s=lower_bound(op, p, nbytes, model),
        order=schedule.order,
        outputs=outputs,
        transfers=run.transfers,
        finish_s=[f + overhead for f in run.finish],
    )


def _check_fault_links(faults: FaultSpec, device: Device) -> None:
    """Every link a fault names exists on this device's fabric (a fault on no link is a mistake)."""
    links = {(link.src, link.dst) for link in device.topology.links}
    named = list(faults.dead) + [k for k in faults.slow if k is not None]
    for src, dst in named:
        if (src, dst) not in links and (dst, src) not in links:
            shown = ", ".join(f"{link_end(a)}-{link_end(b)}" for a, b in sorted(links)[:8])
            raise ConfigError(
                f"no link {link_end(src)}-{link_end(dst)} on the {device.num_cores} cores of {device.name} "
                f"({device.spec.fabric.topology}); " + (f"links are e.g. {shown}" if links else "one core has no links")
            )


def _check_inputs(op: str, inputs: list[np.ndarray], dtype: np.dtype, p: int) -> int:
    for i, x in enumerate(inputs):
        if x.ndim != 1:
            raise ConfigError(f"input of core {i} has shape {x.shape}: collectives take 1-D vectors")
        if x.dtype != dtype:
            raise ConfigError(f"input of core {i} is {x.dtype}, the others {dtype}: give one dtype")
    lengths = {len(x) for x in inputs}
    if op == "allgather":
        n = sum(len(x) for x in inputs)
        b = bounds(n, p)
        expected = [b[i + 1] - b[i] for i in range(p)]
        if [len(x) for x in inputs] != expected:
            raise ConfigError(f"all-gather of {n} elements over {p} cores needs chunks of {expected} elements")
        return n
    if len(lengths) != 1:
        raise ConfigError(f"{op} needs inputs of one length; got lengths {sorted(lengths)}")
    return lengths.pop()


def _buffer_bytes(schedule: Schedule, itemsize: int) -> int:
    """The most bytes one core's in, out and scratch buffers take."""
    return (max(schedule.in_len, default=0) + max(schedule.out_len, default=0) + schedule.tmp_len) * itemsize


def _place_buffers(device: Device, schedule: Schedule, inputs, work: np.dtype, in_place: bool, region: str):
    """Allocate in/out/tmp on every core, in `region`, and fill `in`; returns (blocks, buffers)."""
    blocks, buffers = [], []
    try:
        for core in range(schedule.p):
            memory = device.cores[core].memory
            out_block = memory.allocate(
                max(schedule.out_len[core], 1) * work.itemsize, f"collective.out[{core}]", "activations", region
            )
            blocks.append((core, out_block))
            out = memory.view(out_block, work, (schedule.out_len[core],))
            if in_place and schedule.op == "allgather":  # NCCL: the input is this core's slot of the output
                lo = bounds(schedule.n, schedule.p)[core]
                inp = out[lo : lo + schedule.in_len[core]]
            elif in_place:
                inp = out
            else:
                in_block = memory.allocate(
                    max(schedule.in_len[core], 1) * work.itemsize, f"collective.in[{core}]", "activations", region
                )
                blocks.append((core, in_block))
                inp = memory.view(in_block, work, (schedule.in_len[core],))
            inp[...] = inputs[core]
            tmp = np.empty(0, work)
            if schedule.tmp_len:
                tmp_block = memory.allocate(
                    schedule.tmp_len * work.itemsize, f"collective.tmp[{core}]", "activations", region
                )
                blocks.append((core, tmp_block))
                tmp = memory.view(tmp_block, work, (schedule.tmp_len,))
            buffers.append({"in": inp, "out": out, "tmp": tmp})
    except Exception:
        for core, block in blocks:
            device.cores[core].memory.free(block)
        raise
    return blocks, buffers


def _collect(schedule: Schedule, buffers, dtype: np.dtype) -> list[np.ndarray]:
    outputs = []
    for core in range(schedule.p):
        lo, hi = schedule.result[core]
        outputs.append(buffers[core]["out"][lo:hi].astype(dtype))  # a copy: the buffers are freed
    return outputs


def check_against_numpy(
    result: CollectiveResult, inputs: list[np.ndarray], accumulate: str = "wire", exact: bool = False
) -> bool:
    """Whether `result.outputs` are right, per `reference.expected` and `reference.tolerance`.

    `exact=True` says the inputs were chosen so that every order of reduction gives the
    same result (small integers, as nccl-tests does): then nothing but equality passes.
    """
    expected = reference.expected(result.op, inputs, result.reduce_op, result.root)
    if exact:
        bounds_ = [np.zeros(1)] * result.cores
    else:
        bounds_ = reference.tolerance(result.op, inputs, result.dtype, result.reduce_op, accumulate, result.root)
    for got, want, bound in zip(result.outputs, expected, bounds_, strict=True):
        if got.shape != want.shape:
            return False
        if not bound.any():
            if not np.array_equal(got, want):
                return False
        elif not np.all(np.abs(got.astype(np.float64) - want) <= bound):
            return False
    return True
