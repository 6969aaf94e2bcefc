"""Hypothesis strategies for collectives: a device, an operation, an algorithm, inputs."""

import os

import numpy as np
from hypothesis import strategies as st

from tilesim.collectives import algorithms_for
from tilesim.collectives.numerics import DTYPES
from tilesim.collectives.schedule import bounds
from tilesim.device import Device

MAX_CORES = 64 if os.environ.get("TILESIM_DEEP") else 33
TOPOLOGY_PRESET = {
    "ring": ("tiny", {}),
    "switch": ("a100", {}),
    "torus2d": ("tiny", {"topology": "torus2d", "links_per_core": 4}),
}
OPS = ("allreduce", "reducescatter", "allgather", "broadcast", "alltoall")


def device(topology: str, cores: int) -> Device:
    preset, overrides = TOPOLOGY_PRESET[topology]
    return Device(preset, cores=cores, **overrides)


@st.composite
def collective_case(draw, ops=OPS, max_len=96):
    """(topology, p, op, algo, n, dtype, reduce_op, root)."""
    topology = draw(st.sampled_from(sorted(TOPOLOGY_PRESET)))
    p = draw(st.one_of(st.sampled_from([1, 2, 3, 4, 7, 8, 16, 32, 33]), st.integers(1, MAX_CORES)))
    op = draw(st.sampled_from(ops))
    algo = draw(st.sampled_from(algorithms_for(op, topology)))
    n = draw(st.one_of(st.just(0), st.integers(0, max_len), st.integers(1, 3).map(lambda k: k * p + 1)))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    reduce_op = draw(st.sampled_from(["sum", "max", "min"]))
    root = draw(st.integers(0, p - 1))
    return topology, p, op, algo, n, dtype, reduce_op, root


def make_inputs(op: str, p: int, n: int, dtype: str, seed: int, integer_valued: bool) -> list[np.ndarray]:
    """Per-core inputs; integer-valued ones are small enough that every partial sum is exact."""
    rng = np.random.default_rng(seed)
    lengths = np.diff(bounds(n, p)) if op == "allgather" else [n] * p
    limit = max(1, 64 // max(p, 1)) if dtype == "bf16" else 16  # bf16 holds integers up to 256 exactly
    out = []
    for length in lengths:
        if integer_valued or dtype == "int32":
            values = rng.integers(-limit, limit + 1, size=length)
        else:
            values = rng.standard_normal(length) * 3
        out.append(values.astype(DTYPES[dtype]))
    return out
