"""Parsing one field of a device preset: a quantity with its unit, a count, a fraction, a
topology, and the maps (peak FLOP/s by dtype, efficiencies by kernel class, reserved bytes
by category). Each raises `ConfigError` naming the field (`where`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tilesim.errors import ConfigError
from tilesim.units import parse_quantity

COMPUTE_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")
TOPOLOGIES = ("ring", "torus2d", "switch")
TENSOR_KINDS = ("weights", "kv_cache", "activations")
KERNEL_CLASSES = ("matmul", "attention", "elementwise", "collective")


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of peak for one kernel class (1.0 = the roofline itself)."""

    compute: float = 1.0
    memory: float = 1.0


# Past these a preset describes no device, and numpy's sizes overflow (a count of 1e20 tiles
# was an OverflowError): 16.7M of a thing (an IPU has 1,472 tiles), 1 EiB of a memory.
LARGEST_COUNT = 2**24
LARGEST_BYTES = 2**60


def parse_value(kind: str, value: Any, where: str) -> Any:
    """The value of a field of `kind` (see the module doc); `chip` sections are the spec's."""
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if not 1 <= value <= LARGEST_COUNT:
            raise ConfigError(f"{where}: must be from 1 to {LARGEST_COUNT:,}, got {value}")
        return int(value)  # numpy's integers too: a count from an array is a count
    if kind == "topology":
        if value not in TOPOLOGIES:
            raise ConfigError(f"{where}: topology must be one of {', '.join(TOPOLOGIES)}")
        return value
    if kind == "flops_map":
        return _parse_flops_map(value, where)
    if kind == "efficiency_map":
        return _parse_efficiency_map(value, where)
    if kind == "bytes_map":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a map of category to bytes")
        clash = set(value) & set(TENSOR_KINDS)
        if clash:
            raise ConfigError(f"{where}.{sorted(clash)[0]}: a reserved category cannot be named as a tensor kind")
        return MappingProxyType({str(k): parse_value("bytes", v, f"{where}.{k}") for k, v in value.items()})
    if kind == "fraction":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigError(f"{where}: must be a fraction in (0, 1], got {value!r}")
        return float(value)
    number = parse_quantity(value, kind, where)
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{where}: must be a finite number >= 0, got {value!r}")
    if kind == "frequency" and number == 0:
        raise ConfigError(f"{where}: a clock must be faster than 0 Hz, got {value!r}")
    if kind == "bytes":
        if number != int(number):
            raise ConfigError(f"{where}: must be a whole number of bytes, got {value!r}")
        if number > LARGEST_BYTES:
            raise ConfigError(f"{where}: must be at most 1 EiB, got {value!r}")
        return int(number)
    return number


def _parse_flops_map(value: Any, where: str) -> MappingProxyType:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a map of dtype to FLOP/s ({', '.join(COMPUTE_DTYPES)})")
    unknown = set(value) - set(COMPUTE_DTYPES)
    if unknown:
        raise ConfigError(f"{where}: unknown dtype {sorted(unknown)[0]!r}; known: {COMPUTE_DTYPES}")
    missing = [d for d in COMPUTE_DTYPES if d not in value]
    if missing:
        raise ConfigError(f"{where}: missing peak for dtype {missing[0]!r}")
    peaks = {}
    for dtype in COMPUTE_DTYPES:
        peak = parse_quantity(value[dtype], "flops", f"{where}.{dtype}")
        if not (peak > 0 and math.isfinite(peak)):
            raise ConfigError(f"{where}.{dtype}: peak must be a finite number > 0, got {value[dtype]!r}")
        peaks[dtype] = peak
    return MappingProxyType(peaks)


def _parse_efficiency_map(value: Any, where: str) -> MappingProxyType:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a map of kernel class to {{compute, memory}}")
    # "<class>:<weight format>" (e.g. matmul:int4) overrides a class for products of that format
    variants = sorted(k for k in value if isinstance(k, str) and k.split(":")[0] in KERNEL_CLASSES and ":" in k)
    unknown = set(value) - set(KERNEL_CLASSES) - set(variants)
    if unknown:
        raise ConfigError(
            f"{where}: unknown kernel class {sorted(unknown)[0]!r}; known: {KERNEL_CLASSES} (or class:format)"
        )
    out = {}
    for cls in (*KERNEL_CLASSES, *variants):
        entry = value.get(cls, {})
        if not isinstance(entry, dict) or set(entry) - {"compute", "memory"}:
            raise ConfigError(f"{where}.{cls}: expected {{compute: f, memory: f}}")
        fractions = {}
        for key in ("compute", "memory"):
            f = entry.get(key, 1.0)
            if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
                raise ConfigError(f"{where}.{cls}.{key}: must be a fraction in (0, 1], got {f!r}")
            fractions[key] = float(f)
        out[cls] = Efficiency(**fractions)
    return MappingProxyType(out)
