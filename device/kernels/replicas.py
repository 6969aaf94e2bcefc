"""Products that several emulated cores compute from the same bytes, found once at bind time.

When a model has fewer key/value heads than cores, each key/value head is held by several
cores (runtime/shard.py), and every one of them computes the same projection of the same
normalized hidden state: at TP 9 SmolLM2's 3 key/value heads are each computed 3 times,
which made a step's q, k and v products 1.8x the work of TP 1. The all-core products
(`cores.bind_linear`) compute such a replica once and copy it to the other cores, but only
when its input rows have the same bits as the source's at run time (checked in the kernel
on every call, before anything is computed): an input that differs (a fault, a future op
that feeds cores different rows) is computed as before. Equal weights and inputs give equal
bits from the same row function, so the outputs are what each core would have computed.

Weights are found equal here, once: the runtime never writes a weight after loading.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sources(entries: Sequence[tuple[int, tuple[np.ndarray, ...]]]) -> list[int]:
    """For each entry (input width, arrays: weight codes, scales, offsets, bias), the index
    of the first earlier entry with the same width and byte-identical arrays, or -1."""
    found: list[int] = []
    seen: dict[tuple, list[int]] = {}
    for i, (width, arrays) in enumerate(entries):
        key = (width, *(_fingerprint(a) for a in arrays))
        src = next((j for j in seen.get(key, []) if _equal(arrays, entries[j][1])), -1)
        found.append(src)
        if src < 0:
            seen.setdefault(key, []).append(i)
    return found


def _fingerprint(a: np.ndarray) -> tuple:
    """Shape, type and the first row's bytes: cheap, and different weights differ in it."""
    return a.shape, a.dtype.str, a.reshape(a.shape[0], -1)[0].tobytes() if a.size else b""


def _equal(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool:
    return all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x.view(np.uint8), y.view(np.uint8))
        for x, y in zip(a, b, strict=True)
    )
