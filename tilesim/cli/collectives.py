"""`tilesim collectives`: run and time one collective over a range of sizes, like nccl-tests.

Every row runs the collective with real data through the emulated fabric, checks the result
against numpy, and prints bytes, simulated time, algorithm and bus bandwidth (nccl-tests'
definitions) beside the closed-form alpha-beta prediction.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import numpy as np
from tqdm import tqdm

from tilesim.cli.flags import fill, only_with, within_device
from tilesim.cli.table import print_table
from tilesim.collectives import ALGORITHMS, OPS, algorithms_for, check_against_numpy, run_collective
from tilesim.collectives.api import resolve_algorithm, schedule_for
from tilesim.collectives.numerics import DTYPES, working_dtype
from tilesim.collectives.schedule import Send, bounds
from tilesim.device import Device, FaultSpec, memory
from tilesim.device.topology import Topology
from tilesim.errors import ConfigError
from tilesim.profiler.output import atomic_save, image_format, writable_image
from tilesim.units import fmt_bytes, fmt_time, parse_size


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "collectives",
        help="run and time one collective on a preset's fabric, checked against numpy",
        description="Run one collective over a range of sizes on a device preset's fabric; "
        "each row is checked against numpy and compared with the alpha-beta prediction.",
    )
    p.add_argument("--op", default="allreduce", choices=OPS)
    p.add_argument("--algo", default="auto", help=f"one of {', '.join(ALGORITHMS)}, 'auto' or 'all'")
    p.add_argument("--device", default="trn1", help="device preset (see `tilesim devices`)")
    p.add_argument("--cores", type=int, default=None, help="number of cores (default: the preset's)")
    p.add_argument("--bytes", default="1K:64M", help="one size, or FIRST:LAST doubling (e.g. 1K:256M)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    # None: not given (flags.only_with refuses them where they do not apply)
    p.add_argument("--reduce", default=None, choices=["sum", "max", "min"],
                   help="allreduce and reducescatter: how values combine (default: sum)")  # fmt: skip
    p.add_argument("--root", type=int, default=None, help="root core of a broadcast (default: 0)")
    p.add_argument("--accumulate", default=None, choices=["wire", "fp32"],
                   help="a reduction of 16-bit data: round every hop, or add in fp32 (default: wire)")  # fmt: skip
    p.add_argument("--in-place", action="store_true", help="use the input buffer as the output buffer")
    p.add_argument("--fabric", default="des", choices=["des", "analytic"], help="discrete-event or closed-form fabric")
    p.add_argument("--fault", default=None, help="inject faults, e.g. corrupt=0.01,drop=0.001,dead=2-3,seed=3")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="write bus bandwidth against size (.png, .svg, .pdf or .jpg)",
    )
    p.set_defaults(run=run)


def sizes_from(text: str) -> list[int]:
    if ":" in text:
        first, last = (parse_size(part) for part in text.split(":", 1))
        if first <= 0 or last < first:
            raise ConfigError(f"--bytes {text}: give FIRST:LAST with 0 < FIRST <= LAST")
        out = [first]
        while out[-1] * 2 <= last:
            out.append(out[-1] * 2)
        return out
    return [parse_size(text)]


@contextlib.contextmanager
def _steps_bar(label: str, show: bool, position: int = 1):
    """A bar for one discrete-event run that takes long (a direct all-reduce over 256 cores is
    millions of events): shown after two seconds, gone when the run ends. At `position` 1, under
    the jobs' bar; at 0 for the runs that choose an algorithm, before the jobs start."""
    if not show:
        yield None
        return
    with tqdm(desc=label, unit="step", leave=False, position=position, delay=2.0) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


def make_inputs(op: str, cores: int, n: int, dtype: str, seed: int = 0) -> list[np.ndarray]:
    """Small integers, as nccl-tests uses: every order of addition gives the exact sum."""
    rng = np.random.default_rng(seed)
    lengths = np.diff(bounds(n, cores)) if op == "allgather" else [n] * cores
    return [rng.integers(-4, 5, size=int(length), dtype=np.int8).astype(DTYPES[dtype]) for length in lengths]


def _exact_sums(cores: int, dtype: str) -> bool:
    """Sums of `cores` integers in [-4, 4] are exact in `dtype` (bf16 holds integers to 256)."""
    limit = {"fp32": 2**24, "fp16": 2**11, "bf16": 2**8, "int32": 2**31}[dtype]
    return 4 * cores <= limit


def host_bytes(op: str, algo: str, p: int, n: int, dtype: str, accumulate: str, root: int = 0) -> int:
    """About the most bytes of this machine's memory one checked run holds: every core's
    buffers (in, out and scratch, as the algorithm's schedule sizes them: a direct all-reduce
    keeps all p vectors), its input and output arrays, the float64 reference (reference.py),
    and one message per core in flight. The peaks measured at 64 MiB on 8 cores are 71-97% of it."""
    work = working_dtype(dtype, accumulate).itemsize
    schedule = schedule_for(op, algo, p, n, root, work)
    buffers = sum(schedule.in_len) + sum(schedule.out_len) + p * schedule.tmp_len
    results = sum(hi - lo for lo, hi in schedule.result)
    message = max((s.hi - s.lo for steps in schedule.steps for s in steps if isinstance(s, Send)), default=0)
    arrays = (sum(schedule.in_len) + results) * DTYPES[dtype].itemsize
    reference = (results + 2 * n) * np.dtype(np.float64).itemsize  # the results, a sum and its error bound
    return (buffers + p * message) * work + arrays + reference


def _fits_in_host(jobs: list[tuple[str, int]], args: argparse.Namespace, p: int) -> None:
    """The run holds every core's buffers in this machine's memory: refuse what it cannot
    (past it, the kernel kills the process mid-run). `jobs`: (algorithm, bytes) to run."""
    itemsize = DTYPES[args.dtype].itemsize
    largest: dict[str, int] = {}  # an algorithm holds more for a larger size: its largest is the one to check
    for a, s in jobs:
        largest[a] = max(s, largest.get(a, 0))
    need, algo, size = max((host_bytes(args.op, a, p, s // itemsize, args.dtype, args.accumulate, args.root), a, s)
                           for a, s in largest.items())  # fmt: skip
    have = memory.host_memory_bytes()
    if need > memory.HOST_SHARE * have:
        raise ConfigError(
            f"--bytes {args.bytes}: {algo} {args.op} of {fmt_bytes(size)} on each of {p} cores needs about "
            f"{fmt_bytes(need)} of this machine's memory ({fmt_bytes(have)}); give smaller sizes or fewer --cores"
        )


def run(args: argparse.Namespace) -> int:
    reduces = args.op in ("allreduce", "reducescatter")
    only_with(args, {
        "reduce": (reduces, "reducing operations (--op allreduce or reducescatter)"),
        "root": (args.op == "broadcast", "--op broadcast (the core whose data the others get)"),
        "accumulate": (reduces and args.dtype in ("bf16", "fp16"), "reductions of 16-bit data (--dtype bf16 or fp16)"),
    })  # fmt: skip
    fill(args, {"reduce": "sum", "root": 0, "accumulate": "wire"})
    if args.plot is not None:
        writable_image(args.plot, "--plot")
    if args.cores is not None:
        within_device(args.device, args.cores)
    device = Device(args.device, cores=args.cores)
    p = device.num_cores
    topology = device.spec.fabric.topology
    algos = algorithms_for(args.op, topology) if args.algo == "all" else [args.algo]
    faults = FaultSpec.parse(args.fault) if args.fault is not None else None
    itemsize = DTYPES[args.dtype].itemsize
    sizes = sizes_from(args.bytes)
    if min(sizes) < itemsize:  # no element to move: a row of zeros would pass for a measurement
        raise ConfigError(
            f"--bytes {args.bytes}: {fmt_bytes(min(sizes))} is less than one {args.dtype} element ({itemsize} bytes); "
            "a collective moves at least one"
        )
    jobs = [(algo, size) for algo in algos for size in sizes]
    work = working_dtype(args.dtype, args.accumulate).itemsize
    show = not args.json and sys.stderr.isatty()
    resolved = []
    for a, s in jobs:  # "auto" times every candidate first: minutes for 256 cores of a ring
        with _steps_bar(f"choosing the algorithm for {fmt_bytes(s)}", show and a == "auto", 0) as progress:
            resolved.append((resolve_algorithm(device, args.op, a, s // itemsize, work, args.root, progress), s))
    _fits_in_host(resolved, args, p)
    rows = []
    for (algo, size), (name, _) in tqdm(
        list(zip(jobs, resolved, strict=True)), desc=f"{args.op} on {p} cores", disable=not show, leave=False
    ):
        n = size // itemsize
        inputs = make_inputs(args.op, p, n, args.dtype)
        with _steps_bar(f"{name} {fmt_bytes(size)}", show) as progress:
            result = run_collective(
                args.op,
                inputs,
                device=device,
                algo=algo,
                reduce_op=args.reduce,
                root=args.root,
                accumulate=args.accumulate,
                in_place=args.in_place,
                faults=faults,
                fabric=args.fabric,
                progress=progress,
            )
        row = result.as_row()
        row["correct"] = check_against_numpy(
            result, inputs, args.accumulate, exact=args.reduce != "sum" or _exact_sums(p, args.dtype)
        )
        row["device"] = device.name
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print(rows, device, args)
    if args.plot:
        _plot(rows, args.plot, device, args.op)
    return 0 if all(r["correct"] for r in rows) else 1


def _print(rows: list[dict], device: Device, args: argparse.Namespace) -> None:
    what = {"allreduce": f"reduce={args.reduce}, ", "reducescatter": f"reduce={args.reduce}, ",
            "broadcast": f"root={args.root}, "}.get(args.op, "")  # fmt: skip
    print(
        f"# {args.op} on {device.num_cores} cores of {device.name} ({device.spec.fabric.topology} topology), "
        f"{args.dtype}, {what}fabric={args.fabric}"
    )
    table = []
    for r in rows:
        err = (r["time_s"] / r["predicted_time_s"] - 1) if r["predicted_time_s"] else 0.0
        table.append(
            {
                "bytes": fmt_bytes(r["bytes"]),
                "algo": r["algo"] + (" (auto)" if r["auto"] else ""),
                "time": fmt_time(r["time_s"]),
                "algbw GB/s": f"{r['algbw'] / 1e9:.3f}" if r["time_s"] else "-",
                "busbw GB/s": f"{r['busbw'] / 1e9:.3f}" if r["time_s"] else "-",
                "predicted": fmt_time(r["predicted_time_s"]),
                "sim/pred": f"{err:+.1%}",
                "correct": "yes" if r["correct"] else "NO",
            }
        )
    print_table(table, right=("time", "algbw GB/s", "busbw GB/s", "predicted", "sim/pred"))
    off = [r["time_s"] / r["predicted_time_s"] - 1 for r in rows if r["predicted_time_s"]]
    slower, faster = any(e > 0.05 for e in off), any(e < -0.05 for e in off)
    if slower or faster:
        why = []
        if slower:
            why.append(f"{'injected faults, ' if args.fault else ''}routes of several hops and messages sharing a link "
                       "take longer")  # fmt: skip
        if faster:
            chip = device.spec.fabric.chip
            why.append(
                f"links inside a chip ({chip.cores_per_chip} cores) are faster than the fabric's links it assumes"
                if chip is not None
                else "the simulation runs faster than the closed form's sum of its steps"
            )
        print(
            "\npredicted is the algorithm's closed form on its own topology, with the fabric's link figures "
            f"(docs/collectives.md); here {' and '.join(why)}."
        )
    speeds = sorted({link.bandwidth for link in device.topology.links})
    if speeds:
        link = speeds[0]  # the slowest links bound the bus bandwidth
        faster = f" ({speeds[-1] / 1e9:.3f} GB/s inside a chip)" if len(speeds) > 1 else ""
        print(
            f"\nlink bandwidth {link / 1e9:.3f} GB/s per direction{faster}; busbw near it means the links are busy, "
            "far below it at small sizes means latency dominates."
        )
        big = device.spec.fabric.large_messages
        if big is not None:
            large = Topology(device.spec.fabric.for_message(big.from_bytes), device.num_cores).links[0]
            print(
                f"from {fmt_bytes(big.from_bytes)} on, the large-message protocol's figures: "
                f"link bandwidth {large.bandwidth / 1e9:.3f} GB/s per direction, {fmt_time(big.link_latency)} per hop."
            )


def _plot(rows: list[dict], path: str, device: Device, op: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo in dict.fromkeys(r["algo"] for r in rows):
        mine = [r for r in rows if r["algo"] == algo and r["time_s"] > 0]
        ax.loglog([r["bytes"] for r in mine], [r["busbw"] / 1e9 for r in mine], marker="o", label=algo)
    if device.topology.links:
        ax.axhline(device.topology.links[0].bandwidth / 1e9, color="grey", linestyle="--", label="link bandwidth")
    ax.set_xlabel("bytes per core")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title(f"{op} on {device.num_cores} cores of {device.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda temporary: fig.savefig(temporary, dpi=120, format=image_format(path)))
    plt.close(fig)
