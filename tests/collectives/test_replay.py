"""A recorded all-reduce replayed by the compiled loop gives the numpy replay's bits, and the
float64 sum within float32 rounding."""

import numpy as np
import pytest

from tilesim.collectives.api import algorithms_for, schedule_for
from tilesim.collectives.execute import record
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


def test_moves_that_cannot_be_compiled_fall_back_to_numpy():
    from tilesim.collectives.replay import compile_moves

    a = np.arange(10, dtype=np.float32)
    assert compile_moves([("copy", a[2:8], a[0:6])], [a]) is None  # overlapping ranges
    assert compile_moves([("copy", a[::2], a[1::2])], [a]) is None  # not contiguous
    wide = a.astype(np.float64)
    assert compile_moves([("reduce", wide, wide)], [wide]) is None  # not float32
    assert compile_moves([("copy", a[:5], a[5:])], [a[:6], a[4:]]) is None  # buffers that share bytes
    assert compile_moves([("copy", a[:5], a[5:])], [a]) is not None
