"""Choosing the next token from the logits, with the semantics of transformers' `generate`.

Greedy takes the first largest logit (as `argmax`). Sampling applies, in this order, the
temperature (logits / T), top-k (keep the logits >= the k-th largest) and top-p (drop the
least likely tokens whose cumulative probability stays within 1 - p, keeping at least one),
then draws from the softmax with a seeded numpy generator: the same seed gives the same
tokens. The logits arrive gathered from the cores' vocabulary slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesim.errors import GenerationError
from tilesim.runtime.checks import real, whole


@dataclass(frozen=True)
class SamplingParams:
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        real("temperature", self.temperature, GenerationError, low=0.0)
        whole("top_k", self.top_k, 1, GenerationError, optional=True)
        real("top_p", self.top_p, GenerationError, low=0.0, high=1.0, open_low=True)
        whole("seed", self.seed, 0, GenerationError, maximum=None)

    @property
    def greedy(self) -> bool:
        if self.temperature == 0:
            return True
        return self.temperature is None and self.top_k is None and self.top_p is None

    @property
    def gathered(self) -> str:
        """What the cores must send the sampler: their argmax, their top-k, or all logits."""
        if self.greedy:
            return "argmax"
        return f"topk:{self.top_k}" if self.top_k else "full"


def warp(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Logits (rows, vocab) after temperature, top-k and top-p (removed ones are -inf)."""
    scores = logits.astype(np.float32, copy=True)
    if params.temperature is not None and params.temperature != 1.0:
        scores = _divided(scores, params.temperature)
    if params.top_k is not None:
        k = min(params.top_k, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
        scores = np.where(scores < kth, -np.inf, scores).astype(np.float32)
    if params.top_p is not None and params.top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending
        ordered = np.take_along_axis(scores, order, axis=-1)
        probs = _softmax(ordered)
        remove = np.cumsum(probs, axis=-1) <= (1 - params.top_p)
        remove[:, -1] = False
        mask = np.zeros_like(remove)
        np.put_along_axis(mask, order, remove, axis=-1)
        scores = np.where(mask, -np.inf, scores).astype(np.float32)
    return scores


def _divided(scores: np.ndarray, temperature: float) -> np.ndarray:
    """scores / t in float32, as transformers divides. A temperature so small that the largest
    logits overflow (or that is 0 in float32) gets its limit instead of inf - inf: the largest
    logits alike, all others removed."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        t = np.float32(temperature)  # above float32's range: inf, and every score 0 (uniform)
        out = scores / t if t > 0 else np.full_like(scores, np.inf)
    overflowed = ~np.isfinite(out).all(axis=-1)
    if overflowed.any():
        rows = scores[overflowed]
        out[overflowed] = np.where(rows == rows.max(axis=-1, keepdims=True), 0.0, -np.inf)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of `logits` (rows, vocab)."""
    if params.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    probs = _softmax(warp(logits, params))
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)
