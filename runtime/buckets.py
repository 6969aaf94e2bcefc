"""Compiled buckets, as transformers-neuronx compiles a model: a prefill program per prompt
length (`context_length_estimate`) and a decode program per KV length (`n_positions`). A
step runs in the smallest bucket that holds it; each bucket is a static program of its
own, so each holds device memory for its code (`CoreSpec.program_bytes`).

The default buckets are powers of two: prefill from 16 tokens, decode from 128 positions,
up to the model's `max_context` (which is always the last).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tilesim.errors import ConfigError, GenerationError
from tilesim.runtime.timing import StepShape

PREFILL_SMALLEST, DECODE_SMALLEST = 16, 128


def _powers(smallest: int, largest: int) -> tuple[int, ...]:
    out, size = [], smallest
    while size < largest:
        out.append(size)
        size *= 2
    return (*out, largest)


@dataclass(frozen=True)
class Buckets:
    prefill: tuple[int, ...]  # compiled prompt lengths, ascending
    decode: tuple[int, ...]  # compiled KV lengths, ascending

    @classmethod
    def make(
        cls, max_context: int, prefill: Sequence[int] | None = None, decode: Sequence[int] | None = None
    ) -> Buckets:
        """The buckets of a model of `max_context` positions; None: the default powers of two."""
        return cls(
            _checked("prefill_buckets", prefill, max_context) if prefill is not None
            else _powers(min(PREFILL_SMALLEST, max_context), max_context),
            _checked("decode_buckets", decode, max_context) if decode is not None
            else _powers(min(DECODE_SMALLEST, max_context), max_context),
        )  # fmt: skip

    @property
    def programs(self) -> int:
        """Compiled programs: one per bucket."""
        return len(self.prefill) + len(self.decode)

    def check(self, prompt: int, positions: int) -> None:
        """Refuse, before a run starts, a prompt or a run longer than the largest bucket."""
        self.prefill_for(prompt)
        self.decode_for(positions)

    def prefill_for(self, tokens: int) -> int:
        return _smallest(self.prefill, tokens, "prefill", "prompt tokens")

    def decode_for(self, context: int) -> int:
        return _smallest(self.decode, context, "decode", "positions")

    def prefill_shape(self, batch: int, tokens: int, gathered: str = "argmax") -> StepShape:
        """The compiled step that prefills `tokens` positions of `batch` sequences."""
        size = self.prefill_for(tokens)
        return StepShape("prefill", batch, size, size, gathered)

    def chunk_shape(self, batch: int, tokens: int, cached: int, gathered: str = "argmax") -> StepShape:
        """A prefill of `tokens` after `cached` positions: its tokens' bucket, over the KV bucket
        of both; past the first chunk the request is already set up."""
        size = self.prefill_for(tokens)
        context = max(size, self.decode_for(cached + tokens))
        return StepShape("prefill", batch, size, context, gathered, new_request=cached == 0)

    def windows(self, tokens: int) -> list[tuple[int, int]]:
        """The (first, end) positions of the prefill programs a prompt of `tokens` runs in: one
        if a bucket holds it, else windows of the largest bucket one after another, each
        attending to the cache the ones before it wrote (transformers-neuronx's windowed
        context encoding of a prompt longer than its largest context bucket)."""
        width = self.prefill[-1]
        return [(lo, min(lo + width, tokens)) for lo in range(0, tokens, width)]

    def decode_shape(self, batch: int, context: int, gathered: str = "argmax") -> StepShape:
        """The compiled decode step whose longest sequence holds `context` positions."""
        return StepShape("decode", batch, 1, self.decode_for(context), gathered)


def _smallest(sizes: tuple[int, ...], n: int, kind: str, what: str) -> int:
    for size in sizes:
        if size >= n:
            return size
    raise GenerationError(
        f"no compiled {kind} bucket holds {n} {what}: the largest is {sizes[-1]}; add a larger one to "
        f"`{kind}_buckets` (at most max_context)"
    )


def _checked(name: str, sizes, max_context: int) -> tuple[int, ...]:
    if isinstance(sizes, np.ndarray) and sizes.ndim == 1:
        sizes = sizes.tolist()
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence) or not sizes:
        raise ConfigError(f"`{name}` {sizes!r} must be a non-empty list of sizes, e.g. [128, 512, 2048]")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 1 <= s <= max_context:
            raise ConfigError(f"`{name}`: {s!r} must be a whole number from 1 to max_context={max_context}")
    return tuple(sorted({int(s) for s in sizes}))
