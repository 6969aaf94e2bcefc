"""Physical quantities: parsing them from presets and printing them for people.

Presets may write a figure as a plain number in base units (bytes, bytes/s, seconds,
FLOP/s, Hz) or as a string with a unit, `"624 KiB"`, `"820 GiB/s"`, `"2 us"`, `"190 TFLOP/s"`.
This module imports nothing from tilesim but its errors, so every package may use it.
"""

from __future__ import annotations

import re

from tilesim.errors import ConfigError

_BYTES = {
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_FREQ = {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9}
_FLOPS = {
    "FLOP/s": 1.0,
    "GFLOP/s": 1e9,
    "TFLOP/s": 1e12,
    "PFLOP/s": 1e15,
    "OP/s": 1.0,
    "GOP/s": 1e9,
    "TOP/s": 1e12,
    "TOPS": 1e12,
}
_RATE = {f"{unit}/s": factor for unit, factor in _BYTES.items()}

UNITS: dict[str, dict[str, float]] = {
    "bytes": _BYTES,
    "time": _TIME,
    "frequency": _FREQ,
    "flops": _FLOPS,
    "bandwidth": _RATE,
}

_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ/]+)?\s*$")


def parse_quantity(value: object, kind: str, where: str) -> float:
    """The value of `value` in base units; `kind` is a key of `UNITS`, `where` names the field.

    A plain number is taken as already in base units. Raises ConfigError naming `where` for
    anything else, including a unit of the wrong kind (`"3 GHz"` for a size).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a {kind} quantity, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _QUANTITY.match(value)
        if match:
            number, unit = float(match.group(1)), match.group(2)
            if unit is None:
                return number
            if unit in UNITS[kind]:
                return number * UNITS[kind][unit]
            known = ", ".join(UNITS[kind])
            raise ConfigError(f"{where}: unit {unit!r} is not a {kind} unit (use one of {known})")
    raise ConfigError(f"{where}: expected a {kind} quantity such as a number, got {value!r}")


def parse_size(text: str) -> int:
    """A byte count from command-line text such as `1M`, `256K`, `4096` or `2GiB`."""
    match = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B?)\s*$", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"cannot read {text!r} as a size; write e.g. 4096, 1K, 256M or 2G")
    number, prefix = float(match.group(1)), match.group(2).upper()
    return int(number * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[prefix])


def fmt_bytes(n: float) -> str:
    """`1536` -> `'1.5 KiB'`; binary prefixes, up to four significant digits."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_time(seconds: float | None) -> str:
    """`2.5e-6` -> `'2.5 us'`; picks s, ms, us or ns; None (undefined) -> `'n/a'`."""
    if seconds is None:
        return "n/a"
    s = float(seconds)
    if s == 0:
        return "0 s"
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= factor:
            return f"{s / factor:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"


def fmt_rate(bytes_per_s: float) -> str:
    """`2e9` -> `'2 GB/s'`; decimal prefixes, as bandwidths are quoted."""
    r = float(bytes_per_s)
    for unit, factor in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3)):
        if abs(r) >= factor:
            return f"{r / factor:.4g} {unit}"
    return f"{r:.4g} B/s"


def fmt_flops(flops_per_s: float) -> str:
    """`1.9e14` -> `'190 TFLOP/s'`."""
    r = float(flops_per_s)
    for unit, factor in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if abs(r) >= factor:
            return f"{r / factor:.4g} {unit}"
    return f"{r:.4g} FLOP/s"
