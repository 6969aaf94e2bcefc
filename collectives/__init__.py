"""Collectives over the emulated fabric, as schedules of sends, receives and local reductions.

One module per algorithm (`ring`, `halving_doubling`, `binomial_tree`, `double_binary_tree`,
`direct`, `hierarchical`, `pairwise`), each with `OPS`, `build(op, p, n, root, itemsize)`
and `predict(op, p, n, itemsize, model, root)`; `api.run_collective` runs one on a device.
"""

from tilesim.collectives.api import (
    ALGORITHMS,
    OPS,
    CollectiveResult,
    algorithms_for,
    build_schedule,
    check_against_numpy,
    choose_algorithm,
    predict,
    run_collective,
    simulated_time,
)

__all__ = [
    "ALGORITHMS",
    "OPS",
    "CollectiveResult",
    "algorithms_for",
    "build_schedule",
    "check_against_numpy",
    "choose_algorithm",
    "predict",
    "run_collective",
    "simulated_time",
]
