"""How fast the discrete-event fabric simulates collectives, against the textbook SimPy model.

The reference is the fabric as SimPy's documentation would write it (and as tilesim wrote it
until 2026-12-07): each link direction a `simpy.Resource` of capacity one, a message asking
for it at each hop and releasing it after `N / bandwidth`. tilesim's `Fabric` keeps each
link's next free time instead, so a message takes a link without events of its own for the
queue. Both serve a link's messages in the order their heads reach it; every case here must
give the same collective time to the bit, and the benchmark says so before any ratio.

Cases: the algorithms `algo="auto"` chooses among, timed without data, as a timing-only run
and `tilesim collectives` time them: all-reduces over 32 cores of trn1.32xlarge's torus and
24 of inf2.48xlarge's ring at decode and prefill sizes, and direct all-reduces over 64 cores
of an IPU ring, the case whose events grow as the cube of the cores.
"""

from __future__ import annotations

import statistics
import time

import simpy
from common import alternate, machine

from tilesim.collectives.api import algorithms_for, schedule_for
from tilesim.collectives.cost import model_for
from tilesim.collectives.execute import run_des
from tilesim.device.device import Device
from tilesim.device.fabric import Fabric

CASES = [  # (preset, cores, elements of bf16, algorithms: None for every all-reduce one)
    ("trn1.32xlarge", 32, 8192, None),  # a batch-1 decode step of Llama-2-70b
    ("trn1.32xlarge", 32, 1024 * 8192, None),  # a 1024-token prefill
    ("inf2.48xlarge", 24, 8 * 5120, None),
    ("inf2.48xlarge", 24, 2048 * 5120, None),
    ("ipu-gc200", 64, 512, ["direct"]),
]


class ResourceFabric(Fabric):
    """The reference: a SimPy resource per link direction, asked for at each hop (only how a
    message takes a link differs: `Fabric._take`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resources = {link.id: simpy.Resource(self.env, capacity=1) for link in self.topology.links}

    def _take(self, link, busy: float):
        resource = self._resources[link.id]
        request = resource.request()
        yield request
        self.env.timeout(busy).callbacks.append(lambda _event: resource.release(request))
        return self.env.now


def simulate(fabric_class, preset: str, p: int, n: int, algo: str) -> float:
    device = Device(preset, cores=p, backed=False)
    schedule = schedule_for("allreduce", algo, p, n, 0, 2)
    gamma = model_for(device.spec, p, device.spec.placement["activations"]).gamma
    fabric = fabric_class(device.spec.fabric.for_message(n * 2), p)
    return run_des(schedule, fabric, [None] * p, lambda local, incoming, out=None: local, 2, gamma, 1e6).time


def main() -> None:
    print(f"# fabric_speed.py, {machine()}")
    print("case                               algorithm           reference  tilesim  ratio  same time")
    ratios = []
    for preset, p, n, algos in CASES:
        device = Device(preset, cores=p, backed=False)
        for algo in algos or algorithms_for("allreduce", device.spec.fabric.topology):
            times: dict[str, float] = {}

            def measure(fabric_class, algo=algo, preset=preset, p=p, n=n, times=times):
                t = time.perf_counter()
                times[fabric_class.__name__] = simulate(fabric_class, preset, p, n, algo)
                return time.perf_counter() - t

            walls = alternate({"reference": ResourceFabric, "tilesim": Fabric}, measure, rounds=3)
            ref, ours = min(walls["reference"]), min(walls["tilesim"])
            same = times["ResourceFabric"] == times["Fabric"]
            ratios.append(ref / ours)
            label = f"{preset} x{p}, {n * 2 / 2**10:g} KiB"
            print(f"{label:34} {algo:18} {ref:8.3f} s {ours:7.3f} s  {ref / ours:4.2f}x  {'yes' if same else 'NO'}")
    print(f"median ratio {statistics.median(ratios):.2f}x (reference time / tilesim time, best of 3, alternating)")


if __name__ == "__main__":
    main()
