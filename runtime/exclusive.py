"""One run of a model at a time.

A model's KV cache, session and executor belong to the run in progress: two runs of one model
from two threads would write each other's cache positions and give wrong tokens without an
error. A run from another thread waits for the one in progress; a run started from inside one
on the same thread (a callback such as `on_token` or `progress` calling `generate`) is
refused, since waiting there would never end.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from tilesim.errors import GenerationError

F = TypeVar("F", bound=Callable)


class RunGuard:
    """A model's lock, and which thread holds it."""

    def __init__(self, label: str):
        self.label = label
        self._lock = threading.Lock()
        self._owner: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._owner == threading.get_ident():
            raise GenerationError(
                f"{self.label}: a run of this model was started from inside one of its runs (a callback such as "
                "on_token or progress?): both would use its one KV cache; start it after the run returns"
            )
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None


def one_run_at_a_time(*names: str) -> Callable[[F], F]:
    """Decorator: the models passed as these arguments each run one call at a time (taken in a
    fixed order, so two calls naming the same models in either order cannot wait on each
    other). An argument that is not a model is left to the function's own checks."""

    def wrap(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args, **kwargs):
            try:
                given = signature.bind_partial(*args, **kwargs).arguments
            except TypeError:  # the call itself is wrong: let Python say how
                return function(*args, **kwargs)
            guards = [getattr(given.get(name), "runs", None) for name in names]
            guards = {id(g): g for g in guards if isinstance(g, RunGuard)}
            with contextlib.ExitStack() as stack:
                for key in sorted(guards):
                    stack.enter_context(guards[key].held())
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
