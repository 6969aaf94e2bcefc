"""Fanning points out over Ray (a local cluster on 127.0.0.1, started and stopped here): a
sweep and an SLO rate search give what their serial runs give, in the same order; errors of
a task arrive as they were raised; without the ray package, one clear line."""

import ipaddress
import json
import os
import sys
import time
from pathlib import Path

import pytest

from tilesim.cli.main import main
from tilesim.errors import ConfigError, ShardingError
from tilesim.fanout import run_all


def _slow_square(x):
    time.sleep(0.05 * (3 - x))  # the first points finish last
    return x * x


def _refuse(x):
    raise ShardingError(f"point {x} does not split")


def test_results_come_back_in_the_points_order(cluster):
    assert run_all(_slow_square, [0, 1, 2, 3], ray="auto") == [0, 1, 4, 9]


def test_an_error_in_a_task_is_raised_as_it_was(cluster):
    with pytest.raises(ShardingError, match="point 1 does not split"):
        run_all(_refuse, [1], ray="auto")


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_a_sweep_on_ray_is_the_serial_sweep(cluster, capsys):
    argv = ["sweep", "llama-2-7b", "--device", "trn1,inf2", "--tp", "2,8,64", "--timing-only", "--json"]
    serial = _json(capsys, argv)
    fanned = _json(capsys, [*argv, "--ray", "auto"])
    assert fanned == serial and [r["tp"] for r in serial] == [2, 8, 64, 2, 8, 64]
    assert not serial[2]["fits"], "a point that does not run says why, on Ray too"


def test_an_slo_search_on_ray_tries_the_serial_rates(cluster, capsys):
    argv = ["serve-sim", "llama-2-7b", "--device", "trn1", "--tp", "8", "--requests", "40", "--prompt-len",
            "fixed:128", "--output-len", "fixed:32", "--slo", "ttft_p90=150ms,tpot_p99=30ms", "--probes", "3",
            "--json"]  # fmt: skip
    serial = _json(capsys, argv)
    fanned = _json(capsys, [*argv, "--ray", "auto"])
    assert fanned["tried"] == serial["tried"] and fanned["max_rate"] == serial["max_rate"] > 0
    assert fanned["summary"] == serial["summary"]


def test_without_the_ray_package_the_option_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    from tilesim.fanout import connect

    with pytest.raises(ConfigError, match=r"pip install 'tilesim\[ray\]'"):
        connect("auto")


def _die(x):
    import os

    os._exit(1)  # the worker process dies, as on a crash or a node that leaves


def test_a_worker_that_dies_is_host_lost_naming_the_point(cluster):
    from tilesim.errors import HostLost

    with pytest.raises(HostLost, match=r"running point 7 died"):
        run_all(_die, [7], ray="auto")
    assert run_all(_slow_square, [2], ray="auto") == [4], "the cluster still runs the next points"


def test_a_cluster_address_where_nothing_listens_is_refused_at_once():
    """ray.init waits many minutes on such an address (measured: over 10 on 127.0.0.1:9)."""
    import socket

    from tilesim.fanout import _answers

    with socket.socket() as probe:  # a loopback port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cluster='127.0.0.1:{port}': nothing answers there"):
        _answers(f"127.0.0.1:{port}")
    for address in ("localhost", "127.0.0.1:port", ":6379"):
        with pytest.raises(ConfigError, match="give a cluster's HOST:PORT"):
            _answers(address)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        _answers(f"ray://127.0.0.1:{listening.getsockname()[1]}")  # something answers: Ray's turn


def test_ray_refusing_us_or_failing_to_start_is_one_line(monkeypatch):
    """A cluster found here whose token we lack, or a local cluster that cannot start (its GCS
    did not come up), were tracebacks from inside ray.init."""
    import ray

    from tilesim.fanout import connect

    def refused(address=None, **kwargs):
        if address == "auto":
            raise ray.exceptions.AuthenticationError("RPC error: InvalidAuthToken: token is missing\nmore")
        raise AssertionError("a cluster that refuses us is not replaced by one of our own")

    def nothing_starts(address=None, **kwargs):
        if address == "auto":
            raise ConnectionError("Could not find any running Ray instance.")
        raise RuntimeError("Failed to start GCS.  Last 0 lines of error files:")

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(
        ConfigError,
        match=r"^cluster='auto': cannot join the Ray cluster found here \(RPC error: "
        r"InvalidAuthToken: token is missing\); if `ray start` said token .* RAY_AUTH_MODE=token",
    ):
        connect("auto")
    monkeypatch.setattr(ray, "init", nothing_starts)
    with pytest.raises(
        ConfigError,
        match=r"^cluster='auto': no Ray cluster runs here and one could not be started "
        r"\(Failed to start GCS",
    ):
        connect("auto")


def _node_address(_):
    import ray

    return ray.util.get_node_ip_address()


def _listening_addresses() -> set[str]:
    """The addresses the TCP sockets of this process and its descendants (Ray's servers and
    workers) listen on, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    ours, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= more
        grew = bool(more)
    inodes = set()
    for pid in ours:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                raw = bytes.fromhex(cols[1].split(":")[0])  # 32-bit words, each in host (little-endian) order
                out.add(str(ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))))
    return out


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_local_cluster_listens_and_runs_on_loopback_only(cluster):
    """Ray turns a node address of 127.0.0.1 into the machine's outward one and binds its
    servers there; the clusters tilesim and its tests start stay on loopback."""
    import ray

    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    assert run_all(_node_address, [0, 1], ray="auto") == ["127.0.0.1", "127.0.0.1"]
    listening = _listening_addresses()
    assert listening and all(_loopback(a) for a in listening), listening


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_cluster_started_for_one_run_stays_on_loopback_and_leaves_rays_mode_as_it_was():
    assert run_all(_node_address, [0], ray="auto") == ["127.0.0.1"]
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER
