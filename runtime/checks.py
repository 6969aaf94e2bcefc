"""Checks of the values a caller passes in, where they enter (`tilesim.load`, `generate`):
one sentence in the caller's words (Python argument names; the command line translates
them into its flags), raised as the `TilesimError` subclass given.
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np

from tilesim.errors import TilesimError

# The largest count a caller may give (a batch, tokens, positions, cores, requests): 16.7M, more
# than any model's context (Llama 4 Scout's is 10M). Beyond it a prompt of so many tokens takes
# minutes and gigabytes to build before the memory plan could refuse it, and past 2**63 numpy
# overflows. Seeds are not counts: numpy's generators take any whole number.
LARGEST = 2**24


def whole(
    name: str,
    value,
    minimum: int,
    error: type[TilesimError],
    *,
    optional: bool = False,
    maximum: int | None = LARGEST,
) -> int | None:
    """`value` as an int in [minimum, maximum] (None allowed when `optional`); bools and floats
    refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name}={value!r} must be a whole number of at least {minimum}")
    if value < minimum:
        raise error(f"{name}={value!r} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise error(f"{name}={value!r} must be at most {maximum}")
    return int(value)


def flag(name: str, value, error: type[TilesimError]) -> bool:
    """`value` as True or False: a string such as "no" would read as true."""
    if not isinstance(value, bool | np.bool_):
        raise error(f"{name}={value!r} must be True or False")
    return bool(value)


def function(
    name: str, fn, error: type[TilesimError], of: str = "", *, optional: bool = True, takes: int | None = None
) -> None:
    """`fn` a function (of the arguments `of` names), or None when `optional`; with `takes`, one
    that can be called with that many positional arguments (checked here: a wrong one would
    raise its TypeError only when first called, perhaps at the end of a long run)."""
    if not callable(fn) and not (fn is None and optional):
        raise error(f"{name}={fn!r:.60} must be a function{f' of {of}' if of else ''}{', or None' if optional else ''}")
    if fn is None or takes is None:
        return
    try:
        inspect.signature(fn).bind(*range(takes))
    except ValueError:  # a builtin without a signature: it will say so itself
        return
    except TypeError:
        arguments = "one argument" if takes == 1 else f"{takes} arguments"
        raise error(f"{name}={fn!r:.60} is called with {arguments} {of}, which it does not take") from None


def real(
    name: str, value, error: type[TilesimError], *, low: float, high: float = math.inf, open_low: bool = False
) -> float | None:
    """`value` as a finite float in [low, high] ((low, high] with `open_low`), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name}={value!r} must be a number")
    v = float(value)
    inside = (v > low if open_low else v >= low) and v <= high
    if not math.isfinite(v) or not inside:
        above = f"> {low:g}" if open_low else f">= {low:g}"
        where = f"{'(' if open_low else '['}{low:g}, {high:g}]" if math.isfinite(high) else above
        raise error(f"{name}={value!r} must be a finite number {'in ' if math.isfinite(high) else ''}{where}")
    return v
