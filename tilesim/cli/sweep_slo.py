"""`tilesim sweep --slo`: for every configuration of a sweep, the highest arrival rate whose
requests meet the SLO (serving.slo.max_rate on one drawn workload, the same for every
configuration), as a table and as a Pareto plot of that rate against the cores it takes.
"""

from __future__ import annotations

import argparse

from tilesim.cli.flags import fill, only_with
from tilesim.cli.serve_sim import SAMPLING_FLAGS, add_sampling_arguments, sampling_options
from tilesim.cli.table import print_table
from tilesim.cli.tp_plot import plot_by_tp
from tilesim.errors import ConfigError
from tilesim.runtime.checks import whole
from tilesim.runtime.sampling import SamplingParams
from tilesim.serving import SCHEDULERS, max_rate, parse_slo, serve, synthetic
from tilesim.serving.slo import check_measurable
from tilesim.units import fmt_time

# the serving search's options and their defaults
SERVING = {"requests": 200, "scheduler": "continuous", "max_num_seqs": 8, "seed": 0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("serving (with --slo)")
    g.add_argument("--slo", default=None, help="rank by the highest rate meeting e.g. ttft_p90=0.5,tpot_p99=0.05")
    g.add_argument("--requests", type=int, help=f"requests of the drawn workload (default: {SERVING['requests']})")
    g.add_argument("--prompt-dist", default=None, help="prompt lengths (default: fixed at --prompt-len)")
    g.add_argument("--output-dist", default=None, help="output lengths (default: fixed at --max-new-tokens)")
    g.add_argument("--scheduler", choices=sorted(SCHEDULERS), help=f"(default: {SERVING['scheduler']})")
    g.add_argument("--max-num-seqs", type=int, help=f"sequence slots (default: {SERVING['max_num_seqs']})")
    g.add_argument("--chunk-size", type=int, default=None,
                   help="--scheduler chunked: prompt tokens per step (default: 512)")  # fmt: skip
    g.add_argument("--seed", type=int, help="the drawn workload's seed (default: 0)")
    add_sampling_arguments(g)


def check_flags(args: argparse.Namespace) -> None:
    """The serving options are for --slo (refused without it); the others get their defaults."""
    search = (args.slo is not None, "--slo (the serving search of each configuration)")
    only_with(args, {
        **{name: search for name in (*SERVING, *SAMPLING_FLAGS, "prompt_dist", "output_dist")},
        "chunk_size": (args.slo is not None and args.scheduler == "chunked", "--slo with --scheduler chunked"),
    })  # fmt: skip
    fill(args, SERVING)
    whole("max_num_seqs", args.max_num_seqs, 1, ConfigError)  # before the points: each would fail alike
    whole("chunk_size", args.chunk_size, 1, ConfigError, optional=True)
    SamplingParams(args.temperature, args.top_k, args.top_p)


def workload(args: argparse.Namespace):
    """The sweep's one workload, drawn at one request per second (the search scales it)."""
    slo = parse_slo(args.slo)  # refused before any point runs
    unit = synthetic(
        args.requests, 1.0, prompt=args.prompt_dist if args.prompt_dist is not None else f"fixed:{args.prompt_len}",
        output=args.output_dist if args.output_dist is not None else f"fixed:{args.max_new_tokens}", seed=args.seed,
    )  # fmt: skip
    check_measurable(slo, unit)
    return unit


def needed_context(unit) -> int:
    return max(r.prompt_tokens + r.output_tokens for r in unit)


def slo_row(model, unit, args: argparse.Namespace) -> dict:
    slo = parse_slo(args.slo)
    options = {"scheduler": args.scheduler, "max_num_seqs": args.max_num_seqs, "chunk_size": args.chunk_size,
               **sampling_options(args)}  # fmt: skip
    search = max_rate(lambda w: serve(model, w, **options).summary(), unit, slo)
    s = search.summary
    return {
        "max_rate_rps": search.rate,
        "unbounded": search.unbounded,
        "rate_per_core": search.rate / model.tp,
        "ttft_p90_s": s["ttft"]["p90"] if s else None,
        "tpot_p99_s": s["tpot"]["p99"] if s else None,
        "output_tokens_per_s": s["output_tokens_per_s"] if s else None,
    }


def print_rows(rows: list[dict]) -> None:
    print_table(
        [
            {
                "device": r["device"],
                "tp": r["tp"],
                "dtype": r["dtype"],
                "max rate": f">{r['max_rate_rps']:.3g} req/s" if r["unbounded"] else f"{r['max_rate_rps']:.3g} req/s",
                "per core": f"{r['rate_per_core']:.3g}",
                "TTFT p90": fmt_time(r["ttft_p90_s"]),
                "TPOT p99": fmt_time(r["tpot_p99_s"]),
                "pareto": "*" if r["pareto"] else "",
            }
            for r in rows
        ],
        right=("max rate", "per core", "TTFT p90", "TPOT p99"),
    )
    if any(r["unbounded"] for r in rows):
        print(
            "\n>: every rate tried met the SLO (the workload's requests are served within it even when they all "
            "arrive at once); draw more --requests to find where those configurations saturate"
        )


def mark_pareto(rows: list[dict]) -> None:
    """A configuration is on the front when no other meets the SLO at a higher rate with no more cores."""
    for r in rows:
        r["pareto"] = r["max_rate_rps"] > 0 and not any(
            o is not r and o["tp"] <= r["tp"] and o["max_rate_rps"] >= r["max_rate_rps"]
            and (o["tp"], o["max_rate_rps"]) != (r["tp"], r["max_rate_rps"])
            for o in rows
        )  # fmt: skip


def plot_pareto(rows: list[dict], path: str, name: str, slo_text: str) -> None:
    def front(ax) -> None:
        best = sorted((r for r in rows if r["pareto"]), key=lambda r: r["tp"])
        ax.plot([r["tp"] for r in best], [r["max_rate_rps"] for r in best], color="black", lw=2, ls=":",
                marker="*", markersize=12, label="Pareto front")  # fmt: skip
        lower = [r for r in rows if r["unbounded"]]  # where the doubling stopped, not where it saturates
        if lower:
            ax.scatter([r["tp"] for r in lower], [r["max_rate_rps"] for r in lower], marker="^", s=160,
                       facecolors="none", edgecolors="red", zorder=5,
                       label="at least: every rate tried met the SLO (draw more --requests)")  # fmt: skip

    plot_by_tp(
        rows, path, lambda r: r["max_rate_rps"], xlabel="cores (tensor-parallel degree)",
        ylabel="highest rate meeting the SLO (requests/s)", title=f"{name}: {slo_text}", decorate=front,
    )  # fmt: skip
