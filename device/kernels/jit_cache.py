"""numba's on-disk cache, keyed also on the IR generators a kernel module calls.

numba stamps a cached kernel with the modification time and size of the file that defines
it. A kernel that calls an `intrinsic` from another module (`vector_ir.py`, `int_dot_ir.py`)
compiles that module's LLVM IR into itself, but the other file is not part of the stamp:
after an edit there, the cache would go on running the old IR. `depends_on(__file__,
module, ...)`, called in a kernel module before its `@njit(cache=True)` functions are
defined, adds the bytes of the named modules' sources (and of what they depend on) to the
stamp of every kernel of that file, so an edit to any of them recompiles those kernels (and
only those). The same holds for a jitted function of another file that a kernel calls:
numba compiles it into the caller's cache entry, so those modules are named too.

It works through numba's cache-locator hook (`CacheImpl._locator_classes`): our locator
takes the place numba would have chosen (`NUMBA_CACHE_DIR`, the source tree's
`__pycache__`, or the user-wide cache, in numba's order) and changes only the stamp.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from types import ModuleType

from numba.core import caching

_DEPENDS: dict[str, tuple[str, ...]] = {}  # kernel file (real path) -> files its IR comes from


@cache
def _digest(files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


class _IRKeyedLocator(caching._CacheLocator):
    """numba's own locator for the function, with the IR sources' digest in its stamp."""

    def __init__(self, inner: caching._CacheLocator, files: tuple[str, ...]):
        self._inner, self._files = inner, files

    def ensure_cache_path(self) -> None:
        self._inner.ensure_cache_path()

    def get_cache_path(self) -> str:
        return self._inner.get_cache_path()

    def get_source_stamp(self) -> object:
        return (self._inner.get_source_stamp(), _digest(self._files))

    def get_disambiguator(self) -> str:
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        files = _DEPENDS.get(os.path.realpath(py_file))
        if files is None:
            return None
        for other in caching.CacheImpl._locator_classes:
            if other is cls:
                continue
            inner = other.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner, files)
        return None


def depends_on(kernel_file: str, *modules: ModuleType) -> None:
    """The cached kernels defined in `kernel_file` are recompiled when the source of any of
    `modules` changes, or of what those depend on (call before the file's `@njit(cache=True)`
    definitions). Name also the modules whose jitted functions the kernels call: numba
    compiles a callee into its caller's cache entry but stamps the entry with the caller's
    file alone."""
    files = set()
    for m in modules:
        path = os.path.realpath(m.__file__)
        files |= {path, *_DEPENDS.get(path, ())}
    files = tuple(sorted(files))
    _DEPENDS[os.path.realpath(kernel_file)] = files
    if _IRKeyedLocator not in caching.CacheImpl._locator_classes:
        caching.CacheImpl._locator_classes.insert(0, _IRKeyedLocator)
