"""A recorded collective replayed by the compiled call gives the numpy replay's bits (every
buffer, the schedule's scratch too when it is not private), and an all-reduce the float64
sum within float32 rounding."""

import numpy as np
import pytest

from tilesim.collectives.api import algorithms_for, schedule_for
from tilesim.collectives.execute import record
from tilesim.collectives.replay import compile_moves, replay
from tilesim.device import Device
from tilesim.device.analytic import AnalyticFabric


def _recorded(algo, p, n, inputs):
    device = Device("tiny", cores=p)
    schedule = schedule_for("allreduce", algo, p, n, 0, 4)
    buffers = [{"in": x, "out": x, "tmp": np.zeros(schedule.tmp_len, np.float32)} for x in inputs]
    return record(schedule, buffers, AnalyticFabric(device.spec.fabric, p), 4)


@pytest.mark.parametrize("algo", algorithms_for("allreduce", "ring"))
@pytest.mark.parametrize(("p", "n"), [(2, 7), (3, 100), (8, 1000), (32, 96)])
def test_the_compiled_replay_gives_the_numpy_replays_bits(algo, p, n):
    rng = np.random.default_rng(p * n)
    data = rng.standard_normal((p, n)).astype(np.float32)
    compiled_in = [row.copy() for row in data]
    numpy_in = [row.copy() for row in data]
    fast = _recorded(algo, p, n, compiled_in)
    fast.replay(np.add)
    assert fast._compiled, "the moves of an all-reduce over float32 buffers compile"
    slow = _recorded(algo, p, n, numpy_in)
    slow._compiled = False  # the move-by-move numpy replay
    slow.replay(np.add)
    for a, b in zip(compiled_in, numpy_in, strict=True):
        assert a.tobytes() == b.tobytes()
    exact = data.astype(np.float64).sum(axis=0)
    for a in compiled_in:
        assert np.allclose(a, exact, rtol=1e-5, atol=1e-5 * p)


def _every_op(p, n, seed):
    """(op, algorithm, recorded with numpy replay, recorded for the compiled one) per op
    whose buffers are float32 vectors, each core's `in` and `out` apart."""
    rng = np.random.default_rng(seed)
    device = Device("tiny", cores=p)
    for op in ("allreduce", "reducescatter", "allgather", "broadcast", "alltoall"):
        for algo in algorithms_for(op, "ring"):
            schedule = schedule_for(op, algo, p, n, 0, 4)
            data = [rng.standard_normal(schedule.in_len[i]).astype(np.float32) for i in range(p)]
            pair = []
            for _ in range(2):
                buffers = [
                    {
                        "in": x.copy(),
                        "out": np.full(schedule.out_len[i], np.float32(i + 0.5)),
                        "tmp": np.full(schedule.tmp_len, np.float32(-1.25)),
                    }
                    for i, x in enumerate(data)
                ]
                pair.append(record(schedule, buffers, AnalyticFabric(device.spec.fabric, p), 4))
            yield op, algo, *pair


@pytest.mark.parametrize(("p", "n"), [(2, 5), (3, 17), (5, 64), (8, 40)])
def test_every_collective_compiled_with_its_scratch_kept_gives_the_numpy_bits_in_every_buffer(p, n):
    for op, algo, slow, fast in _every_op(p, n, p * 100 + n):
        arrays = [a for bufs in fast.buffers for a in bufs.values()]
        compiled = compile_moves(fast.moves, arrays)  # nothing private: tmp must match too
        assert compiled is not None, (op, algo)
        for _ in range(2):  # the second replay starts from the first one's results
            replay(compiled)
            for kind, dst, src in slow.moves:
                dst[...] = src if kind == "copy" else dst + src
        for a, b in zip(slow.buffers, fast.buffers, strict=True):
            for name in a:
                assert a[name].tobytes() == b[name].tobytes(), (op, algo, name)


@pytest.mark.parametrize("p", [3, 9, 32])
def test_a_direct_allreduce_forms_its_sum_once_and_leaves_its_private_scratch_alone(p):
    n = 48
    rng = np.random.default_rng(p)
    data = rng.standard_normal((p, n)).astype(np.float32)
    fast = _recorded("direct", p, n, [row.copy() for row in data])
    tmps = [bufs["tmp"].copy() for bufs in fast.buffers]
    fast.replay(np.add)
    assert fast._compiled.adds[:, 3].sum() == (p - 1) * n  # x[0] + x[1] + ... once, not on every core
    assert all(np.array_equal(b["tmp"], t) for b, t in zip(fast.buffers, tmps, strict=True))
    want = data[0].copy()
    for row in data[1:]:
        want += row  # core order, float32: the schedule's documented order
    assert all(b["out"].tobytes() == want.tobytes() for b in fast.buffers)


def test_recordings_of_one_shape_share_a_lowering_and_each_writes_its_own_buffers():
    from tilesim.collectives import replay as lowering

    rng = np.random.default_rng(5)
    data = [rng.standard_normal((4, 30)).astype(np.float32) for _ in range(2)]
    first = _recorded("ring", 4, 30, [row.copy() for row in data[0]])
    first.replay(np.add)
    plans = len(lowering._PLANS)
    second = _recorded("ring", 4, 30, [row.copy() for row in data[1]])
    second.replay(np.add)
    assert len(lowering._PLANS) == plans  # the same moves over other buffers: lowered once
    for rec, x in ((first, data[0]), (second, data[1])):
        slow = _recorded("ring", 4, 30, [row.copy() for row in x])
        slow._compiled = False
        slow.replay(np.add)
        assert all(a["out"].tobytes() == b["out"].tobytes() for a, b in zip(rec.buffers, slow.buffers, strict=True))


def test_a_private_buffer_read_before_it_is_written_is_written_back():
    a = np.arange(6, dtype=np.float32)
    tmp = np.full(6, 2.0, np.float32)
    moves = [("reduce", a[:3], tmp[:3]), ("copy", tmp[:3], a[3:])]  # tmp's old values are used
    compiled = compile_moves(moves, [a, tmp], [tmp])
    replay(compiled)
    replay(compiled)
    assert a.tolist() == [5, 7, 9, 3, 4, 5]  # the second replay added the tmp the first one left
    assert tmp.tolist() == [3, 4, 5, 2, 2, 2]


def test_moves_that_cannot_be_compiled_fall_back_to_numpy():
    a = np.arange(10, dtype=np.float32)
    assert compile_moves([("copy", a[2:8], a[0:6])], [a]) is None  # overlapping ranges
    assert compile_moves([("copy", a[::2], a[1::2])], [a]) is None  # not contiguous
    wide = a.astype(np.float64)
    assert compile_moves([("reduce", wide, wide)], [wide]) is None  # not float32
    assert compile_moves([("copy", a[:5], a[5:])], [a[:6], a[4:]]) is None  # buffers that share bytes
    assert compile_moves([("copy", a[:5], a[5:])], [a]) is not None
    unwritten = np.empty(5, np.float32)  # a staging array an addition reads before anything wrote it
    assert compile_moves([("reduce", a[:5], unwritten)], [a]) is None
