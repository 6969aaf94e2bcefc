"""The exceptions tilesim raises on bad input or an impossible request.

Every error is one sentence that says what was wrong and what to do about it. The command
line prints the message alone (no traceback) and exits with a non-zero status.
This module imports nothing from tilesim, so every package may use it.
"""

from __future__ import annotations


class TilesimError(Exception):
    """Root of every error tilesim raises on purpose."""

    # True when the message quotes a syntax of its own (a --fault spec's `seed=N`): the command
    # line prints it as written instead of turning `name=value` into `--name value`
    verbatim: bool = False


class TilesimWarning(UserWarning):
    """A run that goes on, but not quite as asked or with something tilesim cannot vouch for
    (a context past the trained positions, tensors a config does not use, an unknown
    pre-tokenizer). The command line prints it as one line."""


class ConfigError(TilesimError):
    """A preset, an override or an argument is malformed or out of range."""


class WorkloadError(ConfigError):
    """A serving workload, scheduler or SLO cannot be used: names the file's line, the request or the option."""


class UnknownPreset(ConfigError):
    """No device preset (or named model) has the name asked for."""


class OutOfMemory(TilesimError):
    """A core's memory cannot hold what was asked of it (`OutOfTileMemory`, `OutOfOffchipMemory`), or this
    machine cannot hold the emulated cores' bytes (`OutOfHostMemory`)."""


class OutOfTileMemory(OutOfMemory):
    """A core's tile memory (SRAM: a tile, or all of them) cannot hold what was asked of it."""


class OutOfOffchipMemory(OutOfMemory):
    """A core's off-chip memory (HBM, streaming memory) cannot hold what was asked of it."""


class OutOfHostMemory(OutOfMemory):
    """This machine cannot hold the numbers of a functional run (the emulated cores' weights,
    KV cache and activations): a timing-only run of the same model needs none of them."""


class ShardingError(TilesimError):
    """A model cannot be split over the requested tensor-parallel degree."""


class CheckpointError(TilesimError):
    """A checkpoint is missing, truncated, unsafe, inconsistent or of an unsupported kind."""


class FabricFault(TilesimError):
    """A transfer failed on the fabric (dead link, too many retries) and was not recovered."""


class CollectiveTimeout(FabricFault):
    """A collective did not complete within its simulated time limit (for instance a deadlock)."""


class NumericalError(TilesimError):
    """A step's logits hold NaN or infinity: an activation overflowed, or the checkpoint holds such values."""


class GenerationError(TilesimError):
    """Generation was asked for something the compiled program cannot do (too long, bad ids)."""


class HostLost(TilesimError):
    """A Ray worker or node running part of a run died or left; nothing it computed is used."""


def first_line(exc: BaseException) -> str:
    """Another library's exception as a clause of one of ours: its message's first line (some
    span pages), or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
