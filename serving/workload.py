"""Workloads for request-level simulation: requests that arrive at given times with a prompt
length and an output length, read from a file or drawn from a seeded generator.

A file is JSONL (one object per line) or CSV (a header row), with the fields
`arrival` (seconds from the start), `prompt_tokens` and `output_tokens`, and optionally `id`
and `seed` (the request's sampling seed). A bad line is refused with its line number; other
fields are not read, and a warning names them (a misspelt `seed` would otherwise pass
unseen). A byte-order mark (spreadsheets write one) is skipped.

Generators (`synthetic`): Poisson arrivals (exponential gaps at `rate` per second) or gamma
arrivals (gaps with the same mean and a coefficient of variation `cv`: bursty above 1);
lengths `fixed:N`, `uniform:LO,HI` or `zipf:S,LO,HI` (a Zipf law of exponent S over LO..HI,
the long tail of real prompts). Everything comes from one numpy generator seeded by `seed`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tilesim.errors import TilesimWarning, WorkloadError
from tilesim.runtime.checks import whole


@dataclass(frozen=True)
class Request:
    id: int
    arrival: float  # seconds from the start of the run
    prompt_tokens: int
    output_tokens: int
    seed: int = 0  # the request's own sampling seed
    prompt: tuple[int, ...] | None = None  # token ids, for functional runs (else made from the id)


FIELDS = ("arrival", "prompt_tokens", "output_tokens")
OPTIONAL = ("id", "seed")
MAX_TOKENS = 10_000_000  # a prompt or output length beyond any model's positions: refused as a slip
MAX_REQUESTS = 1_000_000  # a drawn workload's size: each request's record stays in memory (about 2 KiB)
MAX_FILE_BYTES = 256 * 2**20  # a file of MAX_REQUESTS requests at up to 268 bytes each
# Gamma gaps of cv c have shape 1/c^2: past cv 10 numpy's draws underflow to zero gaps (43% of
# them at cv 30) and their mean drifts from 1; below 1e-6 the gaps are equal to a part in a million
# and 1/c^2 soon overflows.
CV_RANGE = (1e-6, 10.0)
# A run's clock is float64 seconds: at 1e9 s (32 years) its steps are within 0.12 us, near 1e300 s
# a time to first token of 40 us came out as 0 s. Arrivals later than this are refused.
LATEST_ARRIVAL = 1e9


def late_arrival(what: str) -> str:
    """Why `what` (an arrival past LATEST_ARRIVAL) is refused."""
    return (
        f"{what} is later than {LATEST_ARRIVAL:.0e} s (32 years), past which the run's float64 clock loses the "
        "microseconds a step takes"
    )


def read_workload(path: str | Path) -> list[Request]:
    """The requests of a JSONL or CSV file, ordered by arrival (ties by line)."""
    if not isinstance(path, str | os.PathLike):
        raise WorkloadError(f"path={path!r} must be the path of a JSONL or CSV file")
    if not str(path).strip():  # Path("") is the current folder
        raise WorkloadError(f"workload {str(path)!r}: give the path of a JSONL or CSV file")
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # a bound: /dev/zero, or a stray huge file, is not read whole
        text = data.decode("utf-8-sig")
    except FileNotFoundError:
        raise WorkloadError(f"workload file {path} does not exist") from None
    except IsADirectoryError:
        raise WorkloadError(f"workload {path} is a folder; give a .jsonl or .csv file") from None
    except UnicodeDecodeError:
        raise WorkloadError(f"workload file {path} is not text (JSONL or CSV)") from None
    except OSError as exc:
        raise WorkloadError(f"workload file {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise WorkloadError(
            f"workload file {path} is larger than {MAX_FILE_BYTES // 2**20} MiB, more than the {MAX_REQUESTS:,} "
            "requests a run takes; split it into several workloads"
        )
    if "\0" in text:
        raise WorkloadError(f"workload file {path} is not text (JSONL or CSV)")
    stripped = text.lstrip()
    if not stripped:
        raise WorkloadError(f"workload file {path} is empty; give one request per line (JSONL or CSV)")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson") or stripped.startswith("{"):
        rows = _jsonl(text, path)
    elif path.suffix.lower() == ".csv" or "," in stripped.split("\n", 1)[0]:
        rows = _csv(text, path)
    else:
        raise WorkloadError(f"workload file {path} is neither JSONL (one object per line) nor CSV (a header row)")
    if not rows:
        raise WorkloadError(f"workload file {path} holds no requests")
    requests = [_request(fields, line, path, i) for i, (line, fields) in enumerate(rows)]
    unread = sorted({name for _, fields in rows for name in fields} - {*FIELDS, *OPTIONAL})
    if unread:
        warnings.warn(
            f"workload file {path}: {', '.join(map(repr, unread))} not read (a request has "
            f"{', '.join(FIELDS + OPTIONAL)})",
            TilesimWarning,
            stacklevel=2,
        )
    return _ordered(requests)


def _jsonl(text: str, path: Path) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        except RecursionError:
            raise WorkloadError(f"{path}, line {number}: not a request (its JSON is nested too deep)") from None
        if not isinstance(value, dict):
            raise WorkloadError(f"{path}, line {number}: each line must be a JSON object with {', '.join(FIELDS)}")
        rows.append((number, value))
        _within_limit(rows, path)
    return rows


def _csv(text: str, path: Path) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [f for f in FIELDS if f not in header]
    if missing:
        raise WorkloadError(f"{path}, line 1: the CSV header lacks {', '.join(missing)} (it has {', '.join(header)})")
    rows = []
    for record in reader:
        fields = {(k or "").strip(): v for k, v in record.items()}
        if None in record.values() or "" in fields.values():
            raise WorkloadError(f"{path}, line {reader.line_num}: a field is missing")
        if None in record:  # DictReader's key for the values beyond the header's names
            raise WorkloadError(f"{path}, line {reader.line_num}: more fields than the header names")
        rows.append((reader.line_num, fields))
        _within_limit(rows, path)
    return rows


def _within_limit(rows: list, path: Path) -> None:
    if len(rows) > MAX_REQUESTS:
        raise WorkloadError(
            f"workload file {path} holds more than {MAX_REQUESTS:,} requests, more than one run takes (every "
            "request's record is kept, about 2 KiB each); split it into several workloads"
        )


def _request(fields: dict, line: int, path: Path, index: int) -> Request:
    where = f"{path}, line {line}"
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise WorkloadError(f"{where}: missing {', '.join(missing)}")
    arrival = _number(fields["arrival"], "arrival", where)
    if not math.isfinite(arrival) or arrival < 0:
        raise WorkloadError(f"{where}: arrival {fields['arrival']!r} must be a time in seconds, 0 or later")
    if arrival > LATEST_ARRIVAL:
        raise WorkloadError(f"{where}: {late_arrival(f'arrival {arrival:.4g} s')}")
    prompt = _count(fields["prompt_tokens"], "prompt_tokens", where, 1, MAX_TOKENS)
    output = _count(fields["output_tokens"], "output_tokens", where, 1, MAX_TOKENS)
    seed = _count(fields.get("seed", 0), "seed", where, 0)
    rid = _count(fields.get("id", index), "id", where, 0)
    return Request(rid, arrival, prompt, output, seed)


def _number(value, name: str, where: str) -> float:
    if isinstance(value, bool):
        raise WorkloadError(f"{where}: {name} must be a number, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise WorkloadError(f"{where}: {name} must be a number, not {value!r}") from None


def _count(value, name: str, where: str, low: int, high: float = math.inf) -> int:
    number = _number(value, name, where)
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        bound = f"of at least {low}" if math.isinf(high) else f"from {low} to {high:,}"
        raise WorkloadError(f"{where}: {name} must be a whole number {bound}, not {value!r}")
    return int(number)


def _ordered(requests: list[Request]) -> list[Request]:
    check_unique_ids(requests)
    return sorted(requests, key=lambda r: r.arrival)  # stable: ties keep the file's order


def check_unique_ids(requests: Sequence[Request]) -> None:
    """Refuse a workload that gives one id to two requests (their results would share a key)."""
    seen: set[int] = set()
    for r in requests:
        if r.id in seen:
            raise WorkloadError(f"request id {r.id} appears twice in the workload")
        seen.add(r.id)


def parse_lengths(text: str, what: str) -> tuple[str, tuple[int, ...]]:
    """`fixed:N`, `uniform:LO,HI`, `zipf:S,LO,HI` (or a bare N) as (kind, numbers)."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise WorkloadError(f"{what} {text!r}: give fixed:N, uniform:LO,HI or zipf:S,LO,HI (token counts)")
    kind, _, rest = text.partition(":")
    if not rest and kind.strip().isdigit():
        kind, rest = "fixed", kind
    kind = kind.strip().lower()
    try:
        numbers = tuple(float(x) for x in rest.split(","))
    except ValueError:
        numbers = ()
    shapes = {"fixed": 1, "uniform": 2, "zipf": 3}
    if kind not in shapes or len(numbers) != shapes[kind]:
        raise WorkloadError(f"{what} {text!r}: give fixed:N, uniform:LO,HI or zipf:S,LO,HI (token counts)")
    counts = numbers[1:] if kind == "zipf" else numbers
    whole_counts = all(math.isfinite(c) and c == int(c) and 1 <= c <= MAX_TOKENS for c in counts)
    if not whole_counts or (len(counts) == 2 and counts[0] > counts[1]):
        raise WorkloadError(f"{what} {text!r}: token counts are whole numbers from 1 to {MAX_TOKENS:,}, LO <= HI")
    if kind == "zipf" and not (math.isfinite(numbers[0]) and numbers[0] > 0):
        raise WorkloadError(f"{what} {text!r}: the Zipf exponent must be a positive number")
    return kind, tuple(int(c) if i or kind != "zipf" else c for i, c in enumerate(numbers))


def _draw(kind: str, numbers: tuple, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "fixed":
        return np.full(n, numbers[0], dtype=np.int64)
    if kind == "uniform":
        return rng.integers(numbers[0], numbers[1] + 1, size=n)
    s, lo, hi = numbers
    values = np.arange(lo, hi + 1)
    weights = (values - lo + 1.0) ** -s
    return rng.choice(values, size=n, p=weights / weights.sum())


def synthetic(
    requests: int,
    rate: float,
    *,
    prompt: str = "fixed:128",
    output: str = "fixed:128",
    arrivals: str = "poisson",
    cv: float = 1.0,
    seed: int = 0,
) -> list[Request]:
    """`requests` requests arriving at `rate` per second on average (see the module doc)."""
    if not isinstance(requests, int) or isinstance(requests, bool) or requests < 1:
        raise WorkloadError(f"requests={requests!r} must be a whole number of at least 1")
    if requests > MAX_REQUESTS:
        raise WorkloadError(
            f"requests={requests} is more than one run takes ({MAX_REQUESTS:,}: every request's record is kept, "
            "about 2 KiB each); serve fewer, or several workloads with their own seeds"
        )
    whole("seed", seed, 0, WorkloadError, maximum=None)
    if not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise WorkloadError(f"rate={rate!r} must be a positive number of requests per second")
    if arrivals not in ("poisson", "gamma"):
        raise WorkloadError(f"arrivals={arrivals!r}: use poisson or gamma")
    low, high = CV_RANGE
    if isinstance(cv, bool) or not isinstance(cv, int | float) or not low <= cv <= high:
        raise WorkloadError(
            f"cv={cv!r} must be a coefficient of variation from {low:g} (nearly periodic arrivals) to {high:g} "
            "(bursty; beyond it the gamma draws round to zero gaps)"
        )
    rng = np.random.default_rng(seed)
    gaps = unit_gaps(requests, arrivals, cv, rng) / rate
    times = np.cumsum(gaps) - gaps[0]  # the first request at 0
    if times[-1] > LATEST_ARRIVAL:
        least = 1.05 * rate * times[-1] / LATEST_ARRIVAL  # printed to 2 digits, not below what fits
        raise WorkloadError(
            f"rate={rate:g}: {late_arrival(f'the last of {requests} requests would come at {times[-1]:.4g} s, which')}"
            f"; give a rate of at least {least:.2g}"
        )
    prompts = _draw(*parse_lengths(prompt, "prompt"), requests, rng)
    outputs = _draw(*parse_lengths(output, "output"), requests, rng)
    seeds = rng.integers(0, 2**31, size=requests)
    return [Request(i, float(times[i]), int(prompts[i]), int(outputs[i]), int(seeds[i])) for i in range(requests)]


def unit_gaps(n: int, arrivals: str, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Inter-arrival gaps of mean 1 (scaled by 1/rate by the caller)."""
    if arrivals == "poisson":
        return rng.exponential(1.0, size=n)
    shape = 1.0 / cv**2  # a gamma of shape k and scale 1/k has mean 1 and cv 1/sqrt(k)
    return rng.gamma(shape, 1.0 / shape, size=n)


def at_rate(requests: Sequence[Request], factor: float) -> list[Request]:
    """The same requests with arrival times divided by `factor` (the rate multiplied by it)."""
    return [replace(r, arrival=r.arrival / factor) for r in requests]
