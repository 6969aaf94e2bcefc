"""Service-level objectives and the highest arrival rate that meets them.

An SLO is a set of bounds on latency statistics: `ttft_p90=0.5,tpot_p99=50ms` (each
`METRIC_STAT=TIME`, METRIC one of ttft, tpot, e2e, queue; STAT one of mean, p50, p90, p99,
max; TIME in seconds or with a unit). `max_rate` replays one workload drawn at unit rate
with its arrival times scaled to each candidate rate (the same requests and the same
randomness at every rate, so more load never means luckier requests), doubles or halves the
rate until the SLO's answer changes, then bisects, geometrically, to `tolerance`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tilesim.runtime.checks import function, whole
from tilesim.serving.metrics import PERCENTILES
from tilesim.serving.workload import LATEST_ARRIVAL, Request, WorkloadError, at_rate
from tilesim.units import parse_quantity

METRICS = ("ttft", "tpot", "e2e", "queue")
STATS = ("mean", *(f"p{q}" for q in PERCENTILES), "max")
MAX_PROBES = 32
# Rounds of doubling, then of narrowing: 100 doublings pass any device's rate by far (2^100),
# and 100 narrowings any float's precision. One round ran per step: a billion was a run without end.
MAX_STEPS = 100


def parse_slo(text: str) -> dict[tuple[str, str], float]:
    """`ttft_p90=0.5,tpot_p99=0.05` as {(metric, stat): seconds}."""
    if not isinstance(text, str):
        raise WorkloadError(f"SLO {text!r} must be text such as 'ttft_p90=0.5,tpot_p99=50ms'")
    out = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        metric, _, stat = name.strip().lower().partition("_")
        if not eq or metric not in METRICS or stat not in STATS:
            raise WorkloadError(
                f"SLO term {part!r}: write METRIC_STAT=TIME, METRIC one of {', '.join(METRICS)}, "
                f"STAT one of {', '.join(STATS)}, e.g. ttft_p90=0.5,tpot_p99=50ms"
            )
        seconds = parse_quantity(value.strip(), "time", f"SLO term {part!r}")
        if not math.isfinite(seconds) or seconds <= 0:
            raise WorkloadError(f"SLO term {part!r}: the bound must be a positive time")
        if (metric, stat) in out:  # the later would replace the earlier without a word
            raise WorkloadError(f"SLO {text!r} bounds {metric}_{stat} twice; give each bound once")
        out[(metric, stat)] = seconds
    if not out:
        raise WorkloadError(f"SLO {text!r} names no bound; e.g. ttft_p90=0.5,tpot_p99=0.05")
    return out


def _no_tpot(stat: str, ran: bool) -> str:
    return (
        f"SLO term tpot_{stat}: no request of the workload {'made' if ran else 'asks for'} two tokens or more, so "
        "none has a time per output token (a first token comes from the prefill); bound ttft or e2e instead, or "
        "give requests longer outputs" + (" (stop_at_eos=False if they end at an end-of-sequence token)" if ran else "")
    )


def check_measurable(slo: dict[tuple[str, str], float], requests: Sequence[Request]) -> None:
    """Refuse a TPOT bound on requests of one output token each: no run can measure it."""
    lengths = [getattr(r, "output_tokens", None) for r in requests]  # serve() checks the requests
    if lengths and all(isinstance(n, int) and n == 1 for n in lengths):
        for metric, stat in slo:
            if metric == "tpot":
                raise WorkloadError(_no_tpot(stat, ran=False))


def meets(summary: dict, slo: dict[tuple[str, str], float]) -> bool:
    try:
        values = {(metric, stat): summary[metric][stat] for metric, stat in slo}
    except (KeyError, TypeError):  # a caller's run function that returns something else
        values = {}
    for (metric, stat), value in values.items():
        # None (NaN from a caller's own run function): no request measured it, at this rate or any other
        if metric == "tpot" and (value is None or (isinstance(value, float) and math.isnan(value))):
            raise WorkloadError(_no_tpot(stat, ran=True))
    if len(values) < len(slo) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v) for v in values.values()
    ):
        raise WorkloadError(
            f"the run gave {summary!r:.80}, not a serving summary (serve(...).summary()) with the SLO's "
            f"{', '.join(f'{m}_{s}' for m, s in slo)}"
        )
    return all(values[key] <= bound for key, bound in slo.items())


@dataclass
class RateSearch:
    slo: dict[tuple[str, str], float]
    rate: float  # the highest rate found to meet the SLO (0: none of those tried)
    summary: dict | None  # the run at that rate
    tried: list[tuple[float, bool]] = field(default_factory=list)  # (rate, met) in the order tried
    # every rate tried met it: the requests are served within the SLO even when they all arrive
    # at once, so `rate` is only where the doubling stopped (more requests would load the device)
    unbounded: bool = False


def _check_slo(slo) -> None:
    """`slo` as parse_slo gives it: (metric, statistic) -> a positive bound in seconds."""
    good = isinstance(slo, dict) and bool(slo)
    for key, bound in slo.items() if good else ():
        good = good and isinstance(key, tuple) and len(key) == 2 and key[0] in METRICS and key[1] in STATS
        good = good and not isinstance(bound, bool) and isinstance(bound, int | float) and 0 < bound < math.inf
    if not good:
        raise WorkloadError(
            f"slo={slo!r:.60} must map (metric, statistic) to a time, as parse_slo('ttft_p90=0.5') does"
        )


def check_probes(probes: int) -> None:
    """Refuse a count of rates per round that is not 1..MAX_PROBES."""
    if not isinstance(probes, int) or isinstance(probes, bool) or not 1 <= probes <= MAX_PROBES:
        raise WorkloadError(
            f"probes={probes!r} must be a whole number from 1 to {MAX_PROBES} (a first round doubles the rate "
            f"once per probe: {MAX_PROBES} span a factor of 2^{MAX_PROBES - 1}, past any device's rate)"
        )


def max_rate(
    run: Callable[[Sequence[Request]], dict],
    unit_workload: Sequence[Request],
    slo: dict[tuple[str, str], float],
    *,
    start: float = 1.0,
    tolerance: float = 0.02,
    steps: int = 40,
    on_try: Callable[[float, bool], None] | None = None,
    probes: int = 1,
    evaluate: Callable[[list[float]], list[dict]] | None = None,
) -> RateSearch:
    """The highest rate (requests/s) at which `run(workload)` (a summary) meets `slo`.

    Each round tries `probes` rates: doubling (or halving) from `start` until the answer
    changes, then at geometric steps inside the bracket (one probe: bisection).
    `evaluate(rates) -> summaries` may run a round's probes at once (`fanout.run_all`); the
    rates tried, and so the answer, depend only on `probes`."""
    if isinstance(start, bool) or not isinstance(start, int | float) or not (math.isfinite(start) and start > 0):
        raise WorkloadError(f"the search's starting rate must be positive, not {start!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance <= 1:
        raise WorkloadError(f"tolerance={tolerance!r} must be the bracket's relative width to stop at, in (0, 1]")
    whole("steps", steps, 1, WorkloadError, maximum=MAX_STEPS)
    check_probes(probes)
    function("run", run, WorkloadError, "(workload)", optional=False, takes=1)
    function("on_try", on_try, WorkloadError, "(rate, met)", takes=2)
    function("evaluate", evaluate, WorkloadError, "(rates)", takes=1)
    _check_slo(slo)
    if isinstance(unit_workload, str | bytes) or not isinstance(unit_workload, Sequence) or not unit_workload:
        raise WorkloadError(f"unit_workload={unit_workload!r:.60} must be a non-empty list of serving.Request")
    check_measurable(slo, unit_workload)
    search = RateSearch(slo, 0.0, None)
    arrivals = [getattr(r, "arrival", None) for r in unit_workload]  # at rate 1; run() checks the requests
    last = max((a for a in arrivals if isinstance(a, int | float) and math.isfinite(a)), default=0.0)
    evaluate = evaluate or (lambda rates: [run(at_rate(unit_workload, r)) for r in rates])

    def round_(rates: list[float]) -> tuple[list[float], list[float]]:
        """(rates that met, rates that did not), each ascending."""
        met, missed = [], []
        summaries = list(evaluate(rates))
        if len(summaries) != len(rates):
            raise WorkloadError(f"evaluate gave {len(summaries)} summaries for {len(rates)} rates; give one a rate")
        for rate, summary in zip(rates, summaries, strict=True):
            ok = meets(summary, slo)
            search.tried.append((rate, ok))
            if ok and rate > search.rate:
                search.rate, search.summary = rate, summary
            if on_try:
                on_try(rate, ok)
            (met if ok else missed).append(rate)
        return sorted(met), sorted(missed)

    def narrowed(lo, hi, met, missed):
        hi = min([*missed, *([hi] if hi is not None else [])], default=None)
        below = [r for r in met if hi is None or r < hi]
        lo = max([*below, *([lo] if lo is not None else [])], default=None)
        return lo, hi

    lo = hi = None
    for _ in range(steps):
        if lo is None and hi is None:
            rates = [start * 2.0**i for i in range(probes)]
        elif hi is None:
            rates = [lo * 2.0 ** (i + 1) for i in range(probes)]
        elif lo is None:
            rates = [hi / 2.0 ** (i + 1) for i in range(probes)]
            if rates[-1] < max(start * 2.0**-30, last / LATEST_ARRIVAL):
                return search  # not even a trickle meets it (slower, the requests would come too late to time)
        else:
            break
        lo, hi = narrowed(lo, hi, *round_(rates))
    if lo is None or hi is None:
        search.unbounded = lo is not None
        return search
    for _ in range(steps):
        if hi / lo <= 1 + tolerance:
            break
        ratio = hi / lo
        lo, hi = narrowed(lo, hi, *round_([lo * ratio ** (j / (probes + 1)) for j in range(1, probes + 1)]))
    return search
