"""Property tests of every collective algorithm on every topology (hypothesis).

References are numpy (collectives/reference.py is not used here: the expected values are
computed below from the inputs with plain float64 numpy).
"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tilesim.collectives import build_schedule, run_collective
from tilesim.collectives.execute import run_analytic, run_des
from tilesim.collectives.numerics import reduce_fn, sum_error_bound
from tilesim.collectives.schedule import bounds
from tilesim.collectives.symbolic import contributions, expected_counts
from tilesim.device.analytic import AnalyticFabric
from tilesim.device.fabric import Fabric
from tilesim.device.faults import FaultSpec
from tilesim.errors import FabricFault

from .strategies import collective_case, device, make_inputs

NUMPY = {"sum": np.sum, "max": np.max, "min": np.min}


def numpy_expected(op, inputs, reduce_op, root, dtype):
    p = len(inputs)
    x = [np.asarray(v, np.float64) for v in inputs]
    if op == "broadcast":
        return [x[root]] * p
    if op == "allgather":
        return [np.concatenate(x)] * p
    if op == "alltoall":
        b = bounds(len(x[0]), p)
        return [np.concatenate([x[j][b[i] : b[i + 1]] for j in range(p)]) for i in range(p)]
    total = NUMPY[reduce_op](np.stack(x), axis=0)
    if op == "allreduce":
        return [total] * p
    b = bounds(len(total), p)
    return [total[b[i] : b[i + 1]] for i in range(p)]


@given(collective_case(), st.booleans(), st.integers(0, 2**16))
def test_results_equal_numpy_on_every_core(case, integer_valued, seed):
    topology, p, op, algo, n, dtype, reduce_op, root = case
    inputs = make_inputs(op, p, n, dtype, seed, integer_valued)
    result = run_collective(op, inputs, device=device(topology, p), algo=algo, reduce_op=reduce_op, root=root)
    expected = numpy_expected(op, inputs, reduce_op, root, dtype)
    assert result.algo == algo and len(result.outputs) == p
    exact = integer_valued or dtype == "int32" or reduce_op != "sum" or op not in ("allreduce", "reducescatter")
    if not exact:
        bound = sum_error_bound(inputs, dtype, "wire")
        if op == "reducescatter":
            b = bounds(n, p)
            bound = [bound[b[i] : b[i + 1]] for i in range(p)]
        else:
            bound = [bound] * p
    for core, (got, want) in enumerate(zip(result.outputs, expected, strict=True)):
        assert got.shape == want.shape and got.dtype == inputs[0].dtype
        if exact:
            assert np.array_equal(got.astype(np.float64), want), f"core {core}"
        else:
            assert np.all(np.abs(got.astype(np.float64) - want) <= bound[core]), f"core {core}"
    if op in ("allreduce", "allgather", "broadcast"):
        for got in result.outputs[1:]:
            assert got.tobytes() == result.outputs[0].tobytes()  # bit-identical on every core
    assert result.time_s >= result.lower_bound_s


@given(collective_case(), st.integers(0, 2**16))
def test_every_output_holds_each_contribution_exactly_once(case, seed):
    _, p, op, algo, n, _, _, root = case
    schedule = build_schedule(op, algo, p, n, root)
    got = contributions(schedule)
    for core, (g, want) in enumerate(zip(got, expected_counts(op, p, n, root), strict=True)):
        assert np.array_equal(g, want), f"core {core} of {algo} {op} on {p} cores"


@given(collective_case(), st.integers(0, 2**16))
def test_reruns_in_place_and_out_of_place_are_bit_identical(case, seed):
    topology, p, op, algo, n, dtype, reduce_op, root = case
    inputs = make_inputs(op, p, n, dtype, seed, integer_valued=False)
    dev = device(topology, p)
    first = run_collective(op, inputs, device=dev, algo=algo, reduce_op=reduce_op, root=root)
    again = run_collective(op, inputs, device=dev, algo=algo, reduce_op=reduce_op, root=root)
    assert [o.tobytes() for o in first.outputs] == [o.tobytes() for o in again.outputs]
    assert first.time_s == again.time_s
    if op != "alltoall":
        in_place = run_collective(op, inputs, device=dev, algo=algo, reduce_op=reduce_op, root=root, in_place=True)
        assert [o.tobytes() for o in first.outputs] == [o.tobytes() for o in in_place.outputs]


@given(collective_case(), st.integers(0, 2**16), st.booleans())
def test_the_send_buffer_is_never_written(case, seed, use_des):
    topology, p, op, algo, n, dtype, reduce_op, root = case
    inputs = make_inputs(op, p, n, dtype, seed, integer_valued=False)
    schedule = build_schedule(op, algo, p, n, root)
    buffers = [
        {
            "in": inputs[i].copy(),
            "out": np.zeros(schedule.out_len[i], inputs[0].dtype),
            "tmp": np.zeros(schedule.tmp_len, inputs[0].dtype),
        }
        for i in range(p)
    ]
    combine = reduce_fn(reduce_op)
    dev = device(topology, p)
    if use_des:
        run_des(schedule, Fabric(dev.spec.fabric, p), buffers, combine, inputs[0].itemsize, 0.0, timeout=10.0)
    else:
        run_analytic(schedule, AnalyticFabric(dev.spec.fabric, p), buffers, combine, inputs[0].itemsize, 0.0)
    for i in range(p):
        assert buffers[i]["in"].tobytes() == inputs[i].tobytes()


@given(collective_case(ops=("allreduce",)), st.integers(0, 2**16), st.sampled_from(["ring", "direct"]))
def test_allreduce_equals_reduce_scatter_then_all_gather(case, seed, rs_algo):
    topology, p, op, algo, n, dtype, reduce_op, _ = case
    inputs = make_inputs(op, p, n, dtype, seed, integer_valued=True)
    dev = device(topology, p)
    whole = run_collective("allreduce", inputs, device=dev, algo=algo, reduce_op=reduce_op)
    scattered = run_collective("reducescatter", inputs, device=dev, algo=rs_algo, reduce_op=reduce_op)
    gathered = run_collective("allgather", scattered.outputs, device=dev, algo=rs_algo)
    for a, b in zip(whole.outputs, gathered.outputs, strict=True):
        assert np.array_equal(a, b)


@settings(max_examples=10)
@given(st.sampled_from(["ring", "switch", "torus2d"]), st.integers(2, 9), st.sampled_from(["ring", "binomial_tree"]))
def test_broadcast_works_from_every_root(topology, p, algo):
    dev = device(topology, p)
    for root in range(p):
        inputs = [np.full(13, core, np.int32) for core in range(p)]
        result = run_collective("broadcast", inputs, device=dev, algo=algo, root=root)
        assert all(np.array_equal(o, inputs[root]) for o in result.outputs)


@pytest.mark.parametrize("kind", ["drop", "corrupt", "dead", "slow", "mixed"])
@settings(max_examples=15)
@given(collective_case(max_len=48), st.integers(0, 2**16))
def test_faults_give_the_exact_result_or_a_fabric_fault_never_a_wrong_answer(kind, case, seed):
    topology, p, op, algo, n, dtype, reduce_op, root = case
    if p == 1:
        p = 2
        root = 0
        algo = "ring" if op != "alltoall" else "pairwise"
    dev = device(topology, p)
    inputs = make_inputs(op, p, n, dtype, seed, integer_valued=False)
    clean = run_collective(op, inputs, device=dev, algo=algo, reduce_op=reduce_op, root=root)
    links = [(l.src, l.dst) for l in dev.topology.links]
    rng = np.random.default_rng(seed)
    spec = {
        "drop": FaultSpec(drop=0.2, seed=seed, max_retries=2),
        "corrupt": FaultSpec(corrupt=0.3, seed=seed, max_retries=2),
        "dead": FaultSpec(dead=frozenset({links[int(rng.integers(len(links)))]}), seed=seed),
        "slow": FaultSpec(slow={links[int(rng.integers(len(links)))]: 8.0}, seed=seed),
        "mixed": FaultSpec(drop=0.05, corrupt=0.05, seed=seed, max_retries=1),
    }[kind]
    try:
        faulty = run_collective(op, inputs, device=dev, algo=algo, reduce_op=reduce_op, root=root, faults=spec)
    except FabricFault as fault:
        event(f"{kind}: FabricFault")
        message = str(fault)
        assert message.startswith("link ") and " at step " in message
        return
    event(f"{kind}: recovered")
    assert [o.tobytes() for o in faulty.outputs] == [o.tobytes() for o in clean.outputs]
    assert faulty.time_s >= clean.time_s or kind in ("drop", "corrupt", "mixed")


def test_collective_inputs_are_checked():
    from tilesim.errors import ConfigError

    dev = device("ring", 3)
    with pytest.raises(ConfigError, match="needs one input per core: got 2 for 3 cores"):
        run_collective("allreduce", [np.zeros(4, np.float32)] * 2, device=dev)
    with pytest.raises(ConfigError, match="inputs of one length"):
        run_collective(
            "allreduce", [np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(5, np.float32)], device=dev
        )
    with pytest.raises(ConfigError, match="cannot do broadcast"):
        run_collective("broadcast", [np.zeros(4, np.float32)] * 3, device=dev, algo="halving_doubling")
    with pytest.raises(ConfigError, match="collectives support fp32, fp16, bf16, int32"):
        run_collective("allreduce", [np.zeros(4, np.float64)] * 3, device=dev)


@given(
    st.sampled_from(["ring", "switch"]),
    st.integers(2, 17),
    st.sampled_from(["fp16", "bf16"]),
    st.integers(1, 200),
    st.integers(0, 2**16),
)
def test_16_bit_data_accumulated_in_fp32_is_rounded_once(topology, p, dtype, n, seed):
    inputs = make_inputs("allreduce", p, n, dtype, seed, integer_valued=False)
    dev = device(topology, p)
    result = run_collective("allreduce", inputs, device=dev, algo="ring", accumulate="fp32")
    exact = np.sum([x.astype(np.float64) for x in inputs], axis=0)
    bound = sum_error_bound(inputs, dtype, "fp32")
    for got in result.outputs:
        assert got.dtype == inputs[0].dtype
        assert np.all(np.abs(got.astype(np.float64) - exact) <= bound)
    wire = run_collective("allreduce", inputs, device=dev, algo="ring", accumulate="wire")
    assert result.time_s >= wire.time_s  # fp32 messages carry twice the bytes


def test_a_schedule_that_cannot_finish_raises_within_a_simulated_time_limit():
    from tilesim.collectives.schedule import Recv, Schedule
    from tilesim.errors import CollectiveTimeout

    # Core 1 waits for a message core 0 never sends.
    schedule = Schedule(
        "allreduce", "broken", 2, 4, [[], [Recv(0, "out", 0, 4, (3, "x"), True)]], [4, 4], [4, 4], [(0, 4), (0, 4)]
    )
    dev = device("ring", 2)
    buffers = [{"in": np.zeros(4, np.float32), "out": np.zeros(4, np.float32), "tmp": np.zeros(0, np.float32)}] * 2
    with pytest.raises(
        CollectiveTimeout, match=r"did not complete within 0\.001 s .*core 1 waits for step 3 from core 0"
    ):
        run_des(schedule, Fabric(dev.spec.fabric, 2), buffers, np.add, 4, 0.0, timeout=1e-3)
    with pytest.raises(CollectiveTimeout, match="core 1 waits for step 3 from core 0"):
        run_analytic(schedule, AnalyticFabric(dev.spec.fabric, 2), buffers, np.add, 4, 0.0)
    calls = []
    with pytest.raises(CollectiveTimeout, match="core 1 waits for step 3 from core 0"):
        run_des(schedule, Fabric(dev.spec.fabric, 2), buffers, np.add, 4, 0.0, timeout=1e-3,
                progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert calls[0] == (0, 1) and calls[-1] == (0, 1)  # its one step never done


def test_a_run_that_reports_its_progress_is_the_same_run_to_the_bit():
    """A large direct all-reduce is millions of events: the command line shows their steps go.
    Stepping the events one by one must not change a time or an output."""
    dev = device("ring", 24)
    inputs = make_inputs("allreduce", 24, 96, "fp32", 5, integer_valued=False)
    calls = []
    seen = run_collective("allreduce", inputs, device=dev, algo="direct", progress=lambda *c: calls.append(c))
    plain = run_collective("allreduce", inputs, device=dev, algo="direct")
    assert seen.time_s == plain.time_s and seen.finish_s == plain.finish_s
    assert all(np.array_equal(a, b) for a, b in zip(seen.outputs, plain.outputs, strict=True))
    total = calls[0][1]
    assert total == sum(len(s) for s in build_schedule("allreduce", "direct", 24, 96).steps)
    assert len(calls) > 3 and calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls)) and {c[1] for c in calls} == {total}


def test_choosing_an_algorithm_reports_each_candidates_run_and_chooses_the_same():
    """algo="auto" first times the candidates on the fabric: minutes for 256 cores of a ring,
    with nothing to show for them before. The watcher sees each candidate's run from 0, and
    watching changes neither the choice nor a time."""
    from tilesim.collectives import api

    dev = device("ring", 24)
    n = 1000  # elements no other test times, so every candidate runs here
    api._runs.clear()
    watched = []
    chosen = api.choose_algorithm(dev, "allreduce", 24, n, 4, 0, "offchip", lambda *c: watched.append(c))
    api._runs.clear()
    assert api.choose_algorithm(dev, "allreduce", 24, n, 4, 0, "offchip") == chosen
    candidates = api.algorithms_for("allreduce", dev.spec.fabric.topology)
    runs = [list(g) for _, g in itertools.groupby(watched, key=lambda c: c[1])]  # a run's calls share its total
    totals = {sum(len(s) for s in build_schedule("allreduce", a, 24, n).steps) for a in candidates}
    assert len(runs) == len(candidates) and {run[0][1] for run in runs} <= totals
    assert all(run[0][0] == 0 for run in runs) and runs[0][-1][0] == runs[0][-1][1]  # the first runs to its end
    calls = []
    result = run_collective("allreduce", n=n + 4, device=dev, progress=lambda *c: calls.append(c))
    assert result.auto and sum(1 for c in calls if c[0] == 0) == len(candidates) + 1  # the choice, then the run


@pytest.mark.parametrize(("topology", "p"), [("ring", 24), ("ring", 32), ("torus2d", 16), ("switch", 8)])
def test_the_choice_is_the_fastest_candidate_though_the_slower_ones_are_stopped_early(topology, p):
    """choose_algorithm stops a candidate once it is slower than the best so far; it must pick
    what timing every candidate to its end picks, ties going to the one listed first."""
    from tilesim.collectives import api

    dev = device(topology, p)
    for op in ("allreduce", "allgather", "broadcast"):
        candidates = api.algorithms_for(op, dev.spec.fabric.topology)
        for n in (3, 700, 40000, 2**20):
            api._runs.clear()
            chosen = api.choose_algorithm(dev, op, p, n, 4, 0, "offchip")
            api._runs.clear()
            fabric = dev.spec.fabric.for_message(4 * n)
            gamma = api.model_for(dev.spec, p, "offchip").gamma
            times = {a: api._simulation(fabric, p, op, a, n, 4, 0, gamma)[0] for a in candidates}
            assert chosen == min(candidates, key=lambda a: (times[a], candidates.index(a))), (op, n, times)
    stopped = api._simulation(fabric, p, "allreduce", "ring", 5000, 4, 0, gamma, within=1e-9)
    assert stopped is None and api._simulation(fabric, p, "allreduce", "ring", 5000, 4, 0, gamma)[0] > 1e-9


def test_a_tie_goes_to_the_candidate_listed_first_whatever_order_they_run_in(monkeypatch):
    """A run stops at its time limit, before the events of that instant: a candidate exactly as
    fast as the best so far must still finish, or a tie would go by the order the runs took."""
    from tilesim.collectives import api

    dev = device("ring", 8)
    candidates = api.algorithms_for("allreduce", dev.spec.fabric.topology)
    for fastest in ((1e-5,) * len(candidates), (2e-5, 1e-5, 1e-5, 3e-5, 1e-5)[: len(candidates)]):
        times = dict(zip(candidates, fastest, strict=True))
        ran = []

        def simulation(fabric, p, op, algo, n, itemsize, root, gamma, within=math.inf, times=times, ran=ran):
            ran.append(algo)
            return None if times[algo] >= within else (times[algo], ())  # as the discrete-event run stops

        monkeypatch.setattr(api, "_simulation", simulation)
        chosen = api.choose_algorithm(dev, "allreduce", 8, 12345, 4, 0, "offchip")
        best = min(times.values())
        assert chosen == next(a for a in candidates if times[a] == best)
        assert sorted(ran) == sorted(candidates) and ran.index(chosen) > 0  # it ran after one as fast
