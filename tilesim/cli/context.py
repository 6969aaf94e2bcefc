"""Warnings about a KV context the command derived itself (no `--max-context` given).

The model warns when its `max_context` goes past the positions it was trained for, in the
Python argument's words. A command that chose the context from its requests says instead
what needs the positions (the prompt and new tokens, the longest request), and only when
they do need more than were trained: a context rounded up to a bucket past them uses none
of the extra positions.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from tilesim.errors import TilesimWarning
from tilesim.runtime.timing import beyond_training


@contextlib.contextmanager
def derived_context_words(graph, needed: int, asked: int | None, what: str) -> Iterator[None]:
    """Around loading a model of `graph` for runs of `needed` positions: unless the user gave
    the context (`asked`), warn that `what` ("the prompt and new tokens") needs positions past
    the trained ones, in place of the model's warning about a max_context they did not give."""
    if asked is not None:
        yield
        return
    message = beyond_training(graph, needed, f"{what} need {needed} positions,")
    if message is not None:
        warnings.warn(message, TilesimWarning, stacklevel=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"max_context=\d+ is beyond", TilesimWarning)
        yield
