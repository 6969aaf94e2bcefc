"""`tilesim serve-sim`: a stream of requests served on an emulated device.

The workload comes from `--workload FILE` (JSONL or CSV: arrival, prompt_tokens,
output_tokens) or is drawn (`--requests N --rate R`, Poisson or gamma arrivals, lengths
`fixed:N`, `uniform:LO,HI`, `zipf:S,LO,HI`, seeded). A named config (llama-2-70b ...) runs
timing-only; a checkpoint runs the real tokens unless `--timing-only`. Prints latency
percentiles, throughput, batch and memory; `--slo` searches the highest arrival rate that
meets the objectives instead; `--plots DIR`, `--trace PATH`, `--json`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

from tqdm import tqdm

from tilesim.api import load, open_source
from tilesim.cli.context import derived_context_words
from tilesim.cli.flags import apart, fill, only_with, within_device
from tilesim.cli.generate import add_bucket_arguments, bucket_lists
from tilesim.cli.table import print_table
from tilesim.device import Device
from tilesim.errors import ConfigError, ShardingError
from tilesim.fanout import check_address, connect, run_all
from tilesim.models.named import named_configs
from tilesim.profiler.output import writable_file, writable_folder
from tilesim.runtime.checks import whole
from tilesim.runtime.precision import check_weight_dtype
from tilesim.runtime.sampling import SamplingParams
from tilesim.runtime.timing import context_for
from tilesim.serving import SCHEDULERS, max_rate, parse_slo, read_workload, serve, synthetic
from tilesim.serving.server import check_slots
from tilesim.serving.slo import check_probes
from tilesim.serving.workload import at_rate
from tilesim.units import fmt_bytes, fmt_time

# the drawn workload's options and their defaults (refused beside --workload)
DRAWN = {"requests": 100, "rate": 1.0, "arrivals": "poisson", "cv": 1.0, "prompt_len": "uniform:64,512",
         "output_len": "uniform:64,512", "seed": 0}  # fmt: skip


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve-sim", help="serve a stream of requests on an emulated device: latency percentiles, throughput, SLOs"
    )
    p.add_argument("model", help="a named config (timing-only), HF checkpoint folder, .gguf file or short name")
    p.set_defaults(cli_renamed={"batch": "max_num_seqs"})  # the library's batch is the sequence slots here
    p.add_argument("--device", default="trn1", help="device preset (see `tilesim devices`)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--dtype", default=None, help="weights' dtype (default: bf16 timing-only, else as stored)")
    p.add_argument("--timing-only", action="store_true", help="time without weights (named configs always are)")
    p.add_argument(
        "--pad-heads",
        action="store_true",
        help="pad attention heads with zero heads when they do not divide by --tp (on with --timing-only)",
    )
    p.add_argument("--workload", default=None, metavar="FILE", help="requests from a JSONL or CSV file")
    p.add_argument("--requests", type=int, help=f"drawn workload: how many requests (default: {DRAWN['requests']})")
    p.add_argument("--rate", type=float,
                   help=f"drawn workload: mean arrivals per second (default: {DRAWN['rate']}; with --slo, where "
                   "the search starts)")  # fmt: skip
    p.add_argument("--arrivals", choices=("poisson", "gamma"), help="drawn workload's arrivals (default: poisson)")
    p.add_argument(
        "--cv", type=float, help="gamma arrivals: coefficient of variation of the gaps, 1e-6 to 10 (default: 1)"
    )
    p.add_argument("--prompt-len", help=f"fixed:N, uniform:LO,HI or zipf:S,LO,HI (default: {DRAWN['prompt_len']})")
    p.add_argument("--output-len", help=f"fixed:N, uniform:LO,HI or zipf:S,LO,HI (default: {DRAWN['output_len']})")
    p.add_argument("--seed", type=int, help="the drawn workload's seed (default: 0)")
    p.add_argument("--scheduler", default="continuous", choices=sorted(SCHEDULERS))
    p.add_argument("--max-num-seqs", type=int, default=8, help="sequence slots (the decode program's batch)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="--scheduler chunked: prompt tokens per step (default: 512)")  # fmt: skip
    p.add_argument("--max-context", type=int, default=None, help="positions per slot (default: the longest request)")
    add_sampling_arguments(p)
    add_bucket_arguments(p)
    p.add_argument("--slo", default=None, help="search the highest rate meeting e.g. ttft_p90=0.5,tpot_p99=0.05")
    p.add_argument(
        "--probes", type=int, default=None, help="--slo: rates tried per round, at most 32 (default 1, 4 with --ray)"
    )
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS", help="--slo: run each round's probes as Ray tasks")
    p.add_argument("--plots", default=None, metavar="DIR", help="write latency_cdf.png and serving_timeline.png")
    p.add_argument("--trace", default=None, metavar="PATH", help="write the requests as a Chrome/Perfetto trace")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _check_flags(args: argparse.Namespace) -> None:
    """Options given where they would do nothing are refused; the others get their defaults."""
    drawn = "a drawn workload; --workload FILE gives the requests"
    only_with(args, {
        **{name: (args.workload is None, drawn) for name in DRAWN},
        "cv": (args.arrivals == "gamma", "--arrivals gamma"),
        "chunk_size": (args.scheduler == "chunked", "--scheduler chunked"),
        "probes": (args.slo is not None, "the rate search (--slo)"),
        "ray": (args.slo is not None, "the rate search (--slo): its probes run as Ray tasks"),
        "ignore_eos": (not _timing_only(args), "runs of the real tokens; a timing-only request always runs to its "
                       "output length"),
    })  # fmt: skip
    fill(args, DRAWN)
    apart(args, "trace", "plots")
    # before the model loads: a slip in them should not wait for it
    whole("tp", args.tp, 1, ShardingError)
    whole("requests", args.requests, 1, ConfigError, maximum=None)  # synthetic() says why it has a maximum
    check_slots(args.max_num_seqs, args.chunk_size)
    SamplingParams(args.temperature, args.top_k, args.top_p)
    if args.probes is not None:
        check_probes(args.probes)
    if args.ray is not None:
        check_address(args.ray)
    if args.dtype is not None:
        check_weight_dtype(args.dtype)


SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "ignore_eos")  # the dests of add_sampling_arguments


def add_sampling_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How each request's tokens are chosen and where they stop (serve-sim, sweep --slo)."""
    p.add_argument("--temperature", type=float, default=None,
                   help="sample each request's tokens with its own seed (default: greedy); timing-only, what "
                   "leaves the cores each step (logits, not an argmax)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample within the nucleus of mass p")
    p.add_argument("--ignore-eos", action="store_true",
                   help="real tokens: run each request to its output length past an end-of-sequence token "
                   "(default: a request ends at one, as a server ends it)")  # fmt: skip


def sampling_options(args: argparse.Namespace) -> dict:
    """`add_sampling_arguments`' flags as serve()'s keyword arguments."""
    return {"stop_at_eos": not args.ignore_eos, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p}  # fmt: skip


def _timing_only(args: argparse.Namespace) -> bool:
    return args.timing_only or args.model in named_configs()


def run(args: argparse.Namespace) -> int:
    _check_flags(args)
    if args.trace is not None:
        writable_file(args.trace, "--trace")
    if args.plots is not None:
        writable_folder(args.plots, "--plots")
    if args.slo is not None:
        slo = parse_slo(args.slo)
        if args.workload is not None:
            raise ConfigError("--slo scales a drawn workload's rate; give --requests and --rate, not --workload")
    timing_only = _timing_only(args)
    checkpoint = open_source(args.model, timing_only)
    requests = (
        read_workload(args.workload)
        if args.workload is not None
        else _drawn(args, 1.0 if args.slo is not None else args.rate)
    )
    needed = max(r.prompt_tokens + r.output_tokens for r in requests)
    what = "the longest request's prompt and output"
    max_context = context_for(checkpoint.graph, needed, args.max_context, what)
    within_device(args.device, args.tp, f"--tp {args.tp} needs {args.tp} cores")
    device = Device(args.device, cores=args.tp, backed=not timing_only)
    dtype = (
        args.dtype if args.dtype is not None else ("bf16" if timing_only and checkpoint.format == "config" else None)
    )
    pad_heads = timing_only or args.pad_heads
    spec = (
        args.model,
        args.device,
        args.tp,
        dtype,
        max_context,
        timing_only,
        pad_heads,
        tuple(sorted(bucket_lists(args).items())),
    )
    with derived_context_words(checkpoint.graph, needed, args.max_context, what):
        model = load(
            checkpoint, device, args.tp, dtype=dtype, max_context=max_context, timing_only=timing_only,
            pad_heads=pad_heads, **bucket_lists(args),
        )  # fmt: skip
    quiet = args.json or not sys.stderr.isatty()
    options = {"scheduler": args.scheduler, "max_num_seqs": args.max_num_seqs, "chunk_size": args.chunk_size,
               **sampling_options(args)}  # fmt: skip
    if args.slo is not None:
        return _search(args, model, spec, requests, slo, options, quiet)
    with tqdm(total=len(requests), desc="serving", unit="req", disable=quiet, leave=False) as bar:
        result = serve(model, requests, progress=bar.update, **options)
    summary = result.summary()
    if args.json:
        out = {"summary": summary}
        if result.functional:
            out["tokens"] = {str(k): v for k, v in result.tokens().items()}
        print(json.dumps(out, indent=2))
    else:
        print_summary(summary)
    sys.stdout.flush()
    _write(args, result)
    return 0


def _drawn(args: argparse.Namespace, rate: float):
    return synthetic(
        args.requests, rate, prompt=args.prompt_len, output=args.output_len, arrivals=args.arrivals, cv=args.cv,
        seed=args.seed,
    )  # fmt: skip


def _search(args, model, spec, unit_workload, slo, options, quiet) -> int:
    bar = tqdm(desc="rate search", unit="run", disable=quiet, leave=False)

    def tried(rate: float, ok: bool) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{rate:.3g} req/s {'meets' if ok else 'misses'}")

    probes = args.probes if args.probes is not None else (4 if args.ray is not None else 1)
    evaluate, started = None, None
    if args.ray is not None:  # each task loads the model itself (once per worker) and serves one rate
        started = connect(args.ray)
        task = functools.partial(_rate_point, spec, options, tuple(unit_workload))
        evaluate = functools.partial(run_all, task, ray=args.ray, desc="probes", quiet=True)
    try:
        search = max_rate(lambda w: serve(model, w, **options).summary(), unit_workload, slo, start=args.rate,
                          on_try=tried, probes=probes, evaluate=evaluate)  # fmt: skip
    finally:
        if started and started[1]:
            started[0].shutdown()
    bar.close()
    terms = ", ".join(f"{m}_{s} <= {fmt_time(v)}" for (m, s), v in slo.items())
    if args.json:
        print(json.dumps({"slo": {f"{m}_{s}": v for (m, s), v in slo.items()}, "max_rate": search.rate,
                          "unbounded": search.unbounded, "tried": search.tried, "summary": search.summary},
                         indent=2))  # fmt: skip
    elif search.summary is None:
        print(f"no arrival rate tried meets {terms} (down to {min(r for r, _ in search.tried):.3g} req/s)")
    elif search.unbounded:
        print(
            f"every rate tried meets {terms}, up to {search.rate:.3g} requests/s: the {len(unit_workload)} requests "
            "are served within it even when they all arrive at once; draw more --requests to find where the "
            "device saturates\n"
        )
        print_summary(search.summary)
    else:
        print(f"highest rate meeting {terms}: {search.rate:.3g} requests/s ({len(search.tried)} runs)\n")
        print_summary(search.summary)
    if (args.plots or args.trace) and search.summary is not None:  # the run at the rate found
        _write(args, serve(model, at_rate(unit_workload, search.rate), **options))
    return 0 if search.summary is not None else 1


@functools.lru_cache(maxsize=4)
def _loaded(spec: tuple):
    """A model as the driver loaded it, loaded again in a Ray worker (kept for the worker's next task)."""
    name, device, tp, dtype, max_context, timing_only, pad_heads, buckets = spec
    return load(
        name, Device(device, cores=tp, backed=not timing_only), tp, dtype=dtype, max_context=max_context,
        timing_only=timing_only, pad_heads=pad_heads, **dict(buckets),
    )  # fmt: skip


def _rate_point(spec: tuple, options: dict, unit_workload: tuple, rate: float) -> dict:
    return serve(_loaded(spec), at_rate(unit_workload, rate), **options).summary()


def _write(args: argparse.Namespace, result) -> None:
    if args.plots:
        from tilesim.serving.plots import write_plots

        paths = write_plots(result, args.plots)
        print(f"wrote {', '.join(p.name for p in paths)} in {args.plots}", file=sys.stderr)
    if args.trace:
        from tilesim.serving.trace import write_request_trace

        path = write_request_trace(result, args.trace)
        print(f"wrote {path} ({fmt_bytes(path.stat().st_size)})", file=sys.stderr)


def print_summary(s: dict) -> None:
    m = s["model"]
    print(
        f"{m['name']} on {s['device']['name']} (TP {m['tp']}, {m['dtype']}), {s['scheduler']} batching, "
        f"{s['max_num_seqs']} slots{', chunks of ' + str(s['chunk_size']) if s['chunk_size'] else ''}, "
        f"{'real tokens' if s['functional'] else 'timing-only'}"
    )
    rows = []
    for key, label in (("ttft", "time to first token"), ("tpot", "time per output token"),
                       ("e2e", "end-to-end latency"), ("queue", "queueing delay")):  # fmt: skip
        rows.append({"": label, **{k: fmt_time(s[key][k]) for k in ("p50", "p90", "p99", "mean", "max")}})
    print_table(rows, right=("p50", "p90", "p99", "mean", "max"))
    mem = s["memory"]
    print(
        f"\n{s['requests']} requests over {fmt_time(s['span_s'])}: {s['throughput_rps']:.3g} requests/s, "
        f"{s['output_tokens_per_s']:.4g} output tokens/s; device busy {s['busy_fraction']:.0%}, "
        f"{s['batch_mean']:.1f} slots held on average (at most {s['batch_max']})"
    )
    allocated = sum(mem["allocated"].values())
    print(
        f"memory on core {mem['core']}: {fmt_bytes(allocated)} of {fmt_bytes(mem['capacity'])} allocated "
        f"(KV cache {fmt_bytes(mem['allocated'].get('kv_cache', 0))} for the slots; at most "
        f"{fmt_bytes(mem['kv_in_use_max'])} of it in use)"
    )
    if s["stopped_at_eos"]:
        print(
            f"{s['stopped_at_eos']} of {s['requests']} requests ended at an end-of-sequence token before their "
            "output length (--ignore-eos runs each to its length)"
        )
    programs = list(s["programs"].items())
    shown = ", ".join(f"{name} x{n}" for name, n in programs[:6]) + (", ..." if len(programs) > 6 else "")
    print(f"compiled buckets run: {shown}")
    offered = s["offered_rps"]
    # served slower than offered, with requests queued for a good part of the run: not a warm-up tail
    if offered and s["throughput_rps"] < 0.9 * offered and s["queue"]["mean"] > 0.1 * s["span_s"]:
        print(
            f"overloaded: {offered:.3g} requests/s offered, {s['throughput_rps']:.3g} served; the queue grows "
            "through the run (more slots, a higher TP degree, or a lower rate)"
        )
