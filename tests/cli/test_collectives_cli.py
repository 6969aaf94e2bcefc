"""`tilesim collectives`: rows like nccl-tests, checked against numpy."""

import json

import pytest

from tilesim.cli.collectives import host_bytes, sizes_from
from tilesim.cli.main import main
from tilesim.device import memory
from tilesim.units import fmt_bytes


def run_json(capsys, *args):
    code = main(["collectives", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_one_row_per_size_with_the_nccl_tests_fields(capsys):
    code, rows = run_json(
        capsys, "--op", "allreduce", "--algo", "ring", "--device", "trn1", "--cores", "8", "--bytes", "1K:64K"
    )
    assert code == 0
    assert [r["bytes"] for r in rows] == [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    for r in rows:
        assert {"op", "algo", "cores", "bytes", "time_s", "algbw", "busbw", "predicted_time_s", "correct"} <= set(r)
        assert r["correct"] is True and r["algo"] == "ring" and r["cores"] == 8
        assert r["algbw"] == pytest.approx(r["bytes"] / r["time_s"])
        assert r["busbw"] == pytest.approx(r["algbw"] * 2 * 7 / 8)
        assert r["time_s"] == pytest.approx(r["predicted_time_s"], rel=0.01)


@pytest.mark.parametrize("fabric", ["des", "analytic"])
def test_one_core_moves_nothing_and_its_row_is_still_json(capsys, fabric):
    """Nothing to move in no time: the bandwidths were Infinity and NaN, which JSON does not have."""
    code = main(["collectives", "--cores", "1", "--bytes", "1K", "--fabric", fabric, "--json"])

    def refuse(constant):
        raise ValueError(constant)

    rows = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert code == 0 and rows[0]["time_s"] == 0 and rows[0]["correct"]
    assert rows[0]["algbw"] is None and rows[0]["busbw"] is None


@pytest.mark.parametrize(
    ("op", "factor"), [("reducescatter", 3 / 4), ("allgather", 3 / 4), ("broadcast", 1.0), ("alltoall", 3 / 4)]
)
def test_bus_bandwidth_factors_follow_nccl_tests(capsys, op, factor):
    code, rows = run_json(capsys, "--op", op, "--cores", "4", "--bytes", "64K", "--device", "a100")
    assert code == 0 and rows[0]["correct"]
    assert rows[0]["busbw"] == pytest.approx(rows[0]["algbw"] * factor)


def test_all_algorithms_compared_and_plotted(capsys, tmp_path):
    plot = tmp_path / "bw.png"
    code = main(
        ["collectives", "--algo", "all", "--device", "a100", "--cores", "8", "--bytes", "1K:8K", "--plot", str(plot)]
    )
    out = capsys.readouterr().out
    assert code == 0
    for algo in ("ring", "halving_doubling", "binomial_tree", "double_binary_tree", "direct"):
        assert algo in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_auto_says_which_algorithm_ran(capsys):
    code, rows = run_json(capsys, "--cores", "4", "--bytes", "1K:1M")
    assert code == 0 and all(r["auto"] for r in rows)
    assert all(r["algo"] in ("ring", "direct", "halving_doubling", "binomial_tree", "double_binary_tree") for r in rows)


def test_one_core_is_legal(capsys):
    code, rows = run_json(capsys, "--cores", "1", "--bytes", "4K")
    assert code == 0 and rows[0]["time_s"] == 0 and rows[0]["correct"]


def test_faults_recovered_or_reported_in_one_line(capsys):
    code, rows = run_json(
        capsys, "--cores", "4", "--bytes", "64K", "--algo", "ring", "--fault", "corrupt=0.2,seed=3,retries=10"
    )
    assert code == 0 and rows[0]["correct"]
    code = main(["collectives", "--cores", "4", "--bytes", "64K", "--algo", "ring", "--fault", "dead=1-2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().startswith("tilesim: error: link 1->2 is dead") and "Traceback" not in err


def test_sizes_double_from_first_to_last():
    assert sizes_from("1K:8K") == [1024, 2048, 4096, 8192]
    assert sizes_from("256M") == [256 << 20]
    assert sizes_from("3:20") == [3, 6, 12]


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["collectives", "--bytes", "lots"]) == 2
    assert "cannot read 'lots' as a size" in capsys.readouterr().err
    assert main(["collectives", "--algo", "bogus", "--bytes", "1K"]) == 2
    assert "unknown algorithm 'bogus'" in capsys.readouterr().err
    assert main(["collectives", "--op", "broadcast", "--algo", "direct", "--bytes", "1K"]) == 2
    assert "cannot do broadcast" in capsys.readouterr().err


def test_host_memory_of_a_run_follows_the_algorithms_buffers():
    """Closed forms in elements of 4 bytes, n per core on p = 8 cores: inputs and outputs
    (n each), the float64 reference (results + 2n, 8 bytes each) and one message per core
    beside each algorithm's own buffers. A ring keeps in and out and sends n/p chunks; a
    direct all-reduce keeps all p vectors in its scratch and sends whole vectors."""
    p, n = 8, 1 << 20
    arrays, reference = 2 * p * n * 4, (p * n + 2 * n) * 8
    ring = (2 * p * n + p * (n // p)) * 4 + arrays + reference
    direct = (2 * p * n + p * p * n + p * n) * 4 + arrays + reference
    assert host_bytes("allreduce", "ring", p, n, "fp32", "wire") == ring
    assert host_bytes("allreduce", "direct", p, n, "fp32", "wire") == direct


def test_a_run_this_machine_cannot_hold_is_refused_before_it_starts(capsys, monkeypatch):
    """A direct all-reduce of 256 MiB on 8 cores holds about 31 GiB: the kernel killed it
    mid-run on a 24 GiB host. The ring holds less than half of that and runs."""
    monkeypatch.setattr(memory, "host_memory_bytes", lambda: 24 << 30)
    args = ["collectives", "--device", "trn1", "--cores", "8", "--bytes", "1K:256M"]
    assert main([*args, "--algo", "all"]) == 2
    err = capsys.readouterr().err
    need = fmt_bytes(host_bytes("allreduce", "direct", 8, 64 << 20, "fp32", "wire"))
    assert f"direct allreduce of 256 MiB on each of 8 cores needs about {need}" in err and "(24 GiB)" in err
    assert host_bytes("allreduce", "ring", 8, 64 << 20, "fp32", "wire") < 0.8 * (24 << 30)
    monkeypatch.setattr(memory, "host_memory_bytes", lambda: 12 << 30)
    assert main([*args, "--algo", "ring"]) == 2
    assert "ring allreduce of 256 MiB" in capsys.readouterr().err


def test_a_simulation_far_from_the_closed_form_is_explained(capsys):
    """Pairwise all-to-all's formula is a switch's; on trn1's ring the block for the core two
    hops away pays two hops (sim/pred +100% at small sizes). On a100's switch they agree."""
    assert main(["collectives", "--op", "alltoall", "--bytes", "1K", "--cores", "4", "--device", "trn1"]) == 0
    ring = capsys.readouterr().out
    assert "+99" in ring and "routes of several hops and messages sharing a link" in ring
    assert main(["collectives", "--op", "alltoall", "--bytes", "1K", "--cores", "4", "--device", "a100"]) == 0
    switch = capsys.readouterr().out
    assert "+0.0%" in switch and "routes of several hops" not in switch


def test_a_simulation_faster_than_the_closed_form_names_the_chip_links(capsys):
    """trn1.32xlarge's hierarchical all-reduce runs 6% under its closed form, which takes the
    fabric's links for every hop: a chip's two cores are joined by faster links. With the chip's
    links as slow as the fabric's, simulation and closed form agree."""
    import dataclasses

    from tilesim.collectives.api import simulate
    from tilesim.device import Device

    assert main(["collectives", "--device", "trn1.32xlarge", "--cores", "32", "--bytes", "16MiB", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["algo"] == "hierarchical" and row["time_s"] < 0.95 * row["predicted_time_s"]
    assert main(["collectives", "--device", "trn1.32xlarge", "--cores", "32", "--bytes", "16MiB"]) == 0
    out = capsys.readouterr().out
    assert "links inside a chip (2 cores) are faster than the fabric's links" in out and "routes of" not in out
    fabric_link = 96 * 2**30 * 0.9 / 1e9  # GB/s: a NeuronLink-v2 port at the efficiency, the bound of busbw
    chip_link = 410 * 2**30 * 0.9 / 1e9  # the preset's link between a chip's two cores
    assert f"link bandwidth {fabric_link:.3f} GB/s per direction ({chip_link:.3f} GB/s inside a chip)" in out
    assert row["busbw"] / 1e9 <= fabric_link
    spec = Device("trn1.32xlarge", cores=32, backed=False).spec
    fabric = spec.fabric
    slow_chip = dataclasses.replace(fabric.chip, link_bandwidth=fabric.link_bandwidth, link_latency=fabric.link_latency)
    plain = Device(dataclasses.replace(spec, fabric=dataclasses.replace(fabric, chip=slow_chip)), backed=False)
    seconds, _ = simulate(plain, "allreduce", "hierarchical", 32, 16 * 2**20 // 4, 4, "offchip")
    assert seconds == pytest.approx(row["predicted_time_s"], rel=1e-6)
