"""numba's on-disk cache never runs stale IR: a kernel whose intrinsic lives in another file
is recompiled when that file changes (`jit_cache.depends_on`), where numba alone would reuse
the cached machine code. Each run is a fresh process, as a user's next run would be."""

import os
import subprocess
import sys

import pytest

GEN = """
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

VALUE = {value}


@intrinsic
def value(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(ir.FloatType(), VALUE)

    return types.float32(), codegen
"""

KERNEL = """
from numba import njit

from irpkg import gen
{register}

@njit(cache=True)
def kernel():
    return gen.value()


print(kernel(), sum(kernel.stats.cache_hits.values()))
"""

REGISTER = "from tilesim.device.kernels import jit_cache\njit_cache.depends_on(__file__, gen)"


def _run(root, value):
    (root / "irpkg" / "gen.py").write_text(GEN.format(value=value))
    env = {**os.environ, "PYTHONPATH": str(root), "NUMBA_CACHE_DIR": str(root / "cache")}
    out = subprocess.run([sys.executable, "-m", "irpkg.kernel"], env=env, capture_output=True, text=True, check=True)
    value_seen, hits = out.stdout.split()
    return float(value_seen), int(hits)


@pytest.mark.parametrize("registered", [True, False])
def test_editing_the_ir_generator_recompiles_the_kernels_that_depend_on_it(tmp_path, registered):
    (tmp_path / "irpkg").mkdir()
    (tmp_path / "irpkg" / "__init__.py").write_text("")
    (tmp_path / "irpkg" / "kernel.py").write_text(KERNEL.format(register=REGISTER if registered else ""))
    assert _run(tmp_path, 1.0) == (1.0, 0)  # compiled, then cached
    assert _run(tmp_path, 1.0) == (1.0, 1)  # an unchanged generator reuses the cache
    seen, _ = _run(tmp_path, 2.0)
    if registered:
        assert seen == 2.0
    else:  # what the registration prevents: numba stamps only the kernel's own file
        assert seen == 1.0, "numba now tracks intrinsics' files itself: jit_cache may be redundant"


MIDDLE = """
from numba import njit

from irpkg import gen
from tilesim.device.kernels import jit_cache

jit_cache.depends_on(__file__, gen)


@njit(cache=True)
def middle():
    return gen.value() + 1
"""

CALLER = """
from numba import njit

from irpkg import middle
{register}

@njit(cache=True)
def kernel():
    return middle.middle()


print(kernel(), sum(kernel.stats.cache_hits.values()))
"""


@pytest.mark.parametrize("registered", [True, False])
def test_a_kernel_calling_another_files_jitted_function_is_recompiled_when_what_that_depends_on_changes(
    tmp_path, registered
):
    """The callee is compiled into the caller's cache entry: naming the callee's module is
    enough, the callee's own dependencies (here the IR generator) come with it."""
    (tmp_path / "irpkg").mkdir()
    (tmp_path / "irpkg" / "__init__.py").write_text("")
    (tmp_path / "irpkg" / "middle.py").write_text(MIDDLE)
    register = "from tilesim.device.kernels import jit_cache\njit_cache.depends_on(__file__, middle)"
    (tmp_path / "irpkg" / "kernel.py").write_text(CALLER.format(register=register if registered else ""))
    assert _run(tmp_path, 1.0) == (2.0, 0)
    assert _run(tmp_path, 1.0) == (2.0, 1)
    seen, _ = _run(tmp_path, 2.0)
    if registered:
        assert seen == 3.0
    else:
        assert seen == 2.0, "numba now tracks callees' files itself: the transitive names may be redundant"
