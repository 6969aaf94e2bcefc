"""The SimPy fabric: exact simulated times (the answers are formulas), real bytes, faults.

Figures are powers of two so that every expected time is exact in binary floating point.
"""

import numpy as np
import pytest

from tilesim.device.fabric import Fabric
from tilesim.device.faults import FaultSpec
from tilesim.device.spec import ChipSpec, FabricSpec
from tilesim.device.topology import Topology, torus_shape
from tilesim.errors import ConfigError, FabricFault

B = float(2**30)  # bytes/s per link per direction
L = 2.0**-20  # seconds per hop
N = 2**12  # bytes: N / B = 2**-18 s


def spec(topology="ring", links=None, **kw):
    links = links or {"ring": 2, "torus2d": 4, "switch": 1}[topology]
    return FabricSpec(topology=topology, link_bandwidth=B, link_latency=L, links_per_core=links, **kw)


def run_transfers(fabric, transfers, payload=None):
    """Post all `transfers` (src, dst) at time 0; return {(src, dst): arrival time}."""
    arrivals = {}

    def receiver(src, dst):
        data = yield fabric.recv(dst, src, (0, src))
        arrivals[(src, dst)] = (fabric.now, data)

    for src, dst in transfers:
        fabric.send(src, dst, (0, src), payload, N)
        fabric.env.process(receiver(src, dst))
    fabric.run()
    return {k: t for k, (t, _) in arrivals.items()}


def test_one_transfer_costs_latency_plus_bytes_over_bandwidth():
    assert run_transfers(Fabric(spec(), 4), [(0, 1)]) == {(0, 1): L + N / B}


def test_transfers_sharing_a_link_direction_queue():
    fabric = Fabric(spec(), 4)
    times = []

    def receiver(tag):
        yield fabric.recv(1, 0, tag)
        times.append(fabric.now)

    for tag in ("a", "b"):
        fabric.send(0, 1, tag, None, N)
        fabric.env.process(receiver(tag))
    fabric.run()
    assert times == [N / B + L, 2 * N / B + L]


def test_a_message_waiting_for_a_link_keeps_its_place_in_the_queue():
    """Messages take a link in the order their heads reach it: one that arrives while another
    waits goes after it, and no two hold the link at once."""
    fabric = Fabric(spec(), 4)
    times = {}

    def receiver(src, tag):
        yield fabric.recv(2, src, tag)
        times[tag] = fabric.now

    def late_sender():
        yield fabric.env.timeout(2 * L)  # after b's head reached link 1->2 (at L), before it frees
        fabric.send(1, 2, "c", None, N)

    fabric.send(1, 2, "a", None, N)  # holds 1->2 from 0 to N / B
    fabric.send(0, 2, "b", None, N)  # 0->1, then waits at 1->2 from L to N / B
    fabric.env.process(late_sender())
    for src, tag in ((1, "a"), (0, "b"), (1, "c")):
        fabric.env.process(receiver(src, tag))
    fabric.run()
    assert L < N / B
    assert times == {"a": N / B + L, "b": 2 * N / B + L, "c": 3 * N / B + L}


def test_transfers_on_disjoint_links_and_opposite_directions_overlap():
    arrivals = run_transfers(Fabric(spec(), 4), [(0, 1), (1, 0), (2, 3)])
    assert arrivals == {(0, 1): L + N / B, (1, 0): L + N / B, (2, 3): L + N / B}


def test_multi_hop_routes_take_the_short_way_round_the_ring():
    topo = Topology(spec(), 8)
    assert [link.name for link in topo.route(0, 3)] == ["0->1 (up)", "1->2 (up)", "2->3 (up)"]
    assert [link.name for link in topo.route(0, 6)] == ["0->7 (down)", "7->6 (down)"]
    assert run_transfers(Fabric(spec(), 8), [(0, 3)]) == {(0, 3): 3 * L + N / B}


def test_torus_routes_go_along_the_row_then_the_column():
    assert torus_shape(8) == (2, 4) and torus_shape(9) == (3, 3) and torus_shape(7) == (1, 7)
    topo = Topology(spec("torus2d"), 8)  # rows of 4: core = row * 4 + col
    assert [link.name for link in topo.route(0, 6)] == ["0->1", "1->2", "2->6"]
    assert [link.name for link in topo.route(0, 7)] == ["0->3", "3->7"]  # wraps along the row
    assert run_transfers(Fabric(spec("torus2d"), 8), [(0, 6)]) == {(0, 6): 3 * L + N / B}


def test_switch_is_one_hop_of_latency_and_the_receivers_downlink_is_shared():
    topo = Topology(spec("switch"), 4)
    assert [link.name for link in topo.route(1, 2)] == ["1->switch", "switch->2"]
    arrivals = run_transfers(Fabric(spec("switch"), 4), [(0, 1), (2, 3)])
    assert arrivals == {(0, 1): L + N / B, (2, 3): L + N / B}
    both_to_3 = run_transfers(Fabric(spec("switch"), 4), [(0, 3), (1, 3)])
    assert sorted(both_to_3.values()) == [L + N / B, L + 2 * N / B]


def test_parallel_links_between_neighbours_add_bandwidth():
    # Four links per core on a ring: two lanes to each neighbour.
    assert run_transfers(Fabric(spec(links=4), 4), [(0, 1)]) == {(0, 1): L + N / (2 * B)}


def test_links_inside_a_chip_use_the_chips_figures():
    chip = ChipSpec(cores_per_chip=2, link_bandwidth=4 * B, link_latency=L / 4)
    arrivals = run_transfers(Fabric(spec(chip=chip), 4), [(0, 1), (1, 2)])
    assert arrivals == {(0, 1): L / 4 + N / (4 * B), (1, 2): L + N / B}


def test_the_receiver_gets_a_copy_of_what_was_sent():
    fabric = Fabric(spec(), 2)
    buffer = np.arange(N // 4, dtype=np.float32)
    got = {}

    def receiver():
        got["data"] = yield fabric.recv(1, 0, "x")

    fabric.send(0, 1, "x", buffer, N)
    buffer[:] = -1  # the sender may reuse its buffer at once
    fabric.env.process(receiver())
    fabric.run()
    assert np.array_equal(got["data"], np.arange(N // 4, dtype=np.float32))


def test_the_transfer_hook_sees_every_transfer():
    records = []
    fabric = Fabric(spec(), 4, on_transfer=records.append)
    run_transfers(fabric, [(0, 2)])
    (record,) = records
    assert (record.src, record.dst, record.nbytes, record.outcome) == (0, 2, N, "ok")
    assert (record.start, record.end) == (0.0, 2 * L + N / B)
    assert record.links == ("0->1 (up)", "1->2 (up)")


def test_a_slow_link_divides_its_bandwidth():
    faults = FaultSpec(slow={(0, 1): 4.0})
    arrivals = run_transfers(Fabric(spec(), 4, faults=faults), [(0, 1), (1, 2)])
    assert arrivals == {(0, 1): L + 4 * N / B, (1, 2): L + N / B}


def test_corruption_is_caught_by_the_checksum_and_the_message_resent():
    payloads = [np.arange(N // 4, dtype=np.float32) + i for i in range(10)]
    faults = FaultSpec(corrupt=0.5, seed=1, max_retries=20)
    records = []
    fabric = Fabric(spec(), 2, faults=faults, on_transfer=records.append)
    got = {}

    def receiver(i):
        got[i] = yield fabric.recv(1, 0, i)

    for i, payload in enumerate(payloads):
        fabric.send(0, 1, i, payload, N)
        fabric.env.process(receiver(i))
    fabric.run()
    assert all(np.array_equal(got[i], payloads[i]) for i in range(10))
    outcomes = [r.outcome for r in records]
    assert outcomes.count("ok") == 10 and outcomes.count("corrupt") >= 1
    assert len(fabric.faults.injected) == outcomes.count("corrupt")
    assert fabric.now > 10 * N / B + L  # resending took time


def test_a_dead_link_is_reported_with_the_link_and_the_step():
    fabric = Fabric(spec(), 4, faults=FaultSpec(dead=frozenset({(1, 2)}), max_retries=2))
    fabric.send(0, 2, (7, "chunk"), np.zeros(4), 16)
    with pytest.raises(
        FabricFault, match=r"link 1->2 is dead: transfer 0->2 of 16 bytes at step 7 failed after 3 attempts"
    ):
        fabric.run()


def test_always_corrupting_links_give_up_after_the_retry_limit():
    fabric = Fabric(spec(), 2, faults=FaultSpec(corrupt=1.0, max_retries=3))
    fabric.send(0, 1, (2, 0), np.ones(8), 32)
    with pytest.raises(FabricFault, match=r"link 0->1 corrupted the message 4 times"):
        fabric.run()


def test_fault_specs_parse_from_the_command_line_form():
    f = FaultSpec.parse("corrupt=0.01,drop=0.001,dead=2-3,slow=0-1:4,seed=3,retries=5")
    assert (f.corrupt, f.drop, f.seed, f.max_retries) == (0.01, 0.001, 3, 5)
    assert f.dead == {(2, 3)} and dict(f.slow) == {(0, 1): 4.0}
    assert dict(FaultSpec.parse("slow=2").slow) == {None: 2.0}
    with pytest.raises(ConfigError, match="unknown fault 'explode'"):
        FaultSpec.parse("explode=1")
    with pytest.raises(ConfigError, match="probability"):
        FaultSpec.parse("drop=1.5")
    # every attempt is simulated: corrupt=1 with 10^8 retries ran for ever
    with pytest.raises(ConfigError, match="retries=99999999: the retries must be a whole number from 0 to 100"):
        FaultSpec.parse("corrupt=1,retries=99999999")
    assert FaultSpec.parse("corrupt=1,retries=100").max_retries == 100
    with pytest.raises(ConfigError, match="seed=-2: a seed is a whole number of at least 0"):
        FaultSpec.parse("drop=0.1,seed=-2")
    # the last of two values silently won; an infinite slow-down divided by zero bandwidth
    twice = [("drop=0.1,drop=0.2", "drop"), ("slow=2,slow=3", "slow=F"), ("slow=0-1:2,slow=0-1:3", "slow=0-1"),
             ("dead=1-2,dead=1-2", "dead=1-2"), ("retries=1,max_retries=2", "retries")]  # fmt: skip
    for text, given in twice:
        with pytest.raises(ConfigError, match=f"gives {given} twice"):
            FaultSpec.parse(text)
    assert dict(FaultSpec.parse("slow=0-1:2,slow=1-0:3").slow) == {(0, 1): 2.0, (1, 0): 3.0}
    with pytest.raises(ConfigError, match=r"slow=inf on link 0-1: .* a finite number >= 1 .*dead=A-B"):
        FaultSpec.parse("slow=0-1:inf")


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [({"drop": "x"}, "drop='x': a probability"), ({"max_retries": 2.5}, "retries=2.5"), ({"seed": 1.5}, "seed=1.5"),
     ({"slow": 5}, "slow=5: give a mapping"), ({"slow": {None: "x"}}, "slow=x on every link"),
     ({"dead": 5}, "dead=5: give a set of links"), ({"dead": [(1, "a")]}, "link \\(1, 'a'\\): a link is a pair"),
     ({"slow": {0: 2.0}}, "link 0: a link is a pair")],
)  # fmt: skip
def test_a_fault_spec_of_the_wrong_kind_is_named(kwargs, phrase):
    """Each was a TypeError or an AttributeError, or (dead=5) accepted until the first message."""
    with pytest.raises(ConfigError, match=phrase):
        FaultSpec(**kwargs)
