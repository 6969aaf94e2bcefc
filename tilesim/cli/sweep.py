"""`tilesim sweep`: one model over devices, tensor-parallel degrees and dtypes.

Each configuration is loaded and run (timing-only with `--timing-only`); a row says its time
to first token, time per token, tokens per second and memory per core, or why it does not
run (heads that do not divide, memory that does not fit). A dtype may name the activations
too: `int4:int8` is int4 weights with int8 activations. `--plot` draws time per token
against the TP degree, one line per device (and dtype).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys

from tilesim.api import load, open_source
from tilesim.cli import sweep_slo
from tilesim.cli.context import derived_context_words
from tilesim.cli.flags import int_list
from tilesim.cli.main import in_cli_words
from tilesim.cli.table import print_table
from tilesim.cli.tp_plot import plot_by_tp
from tilesim.device import Device
from tilesim.device.spec import preset_names
from tilesim.errors import ConfigError, TilesimError, UnknownPreset
from tilesim.fanout import run_all
from tilesim.profiler.output import writable_image
from tilesim.runtime.checks import whole
from tilesim.runtime.precision import ACT_DTYPES, WEIGHT_DTYPES
from tilesim.runtime.timing import context_for
from tilesim.units import fmt_bytes, fmt_time


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="compare devices, TP degrees and dtypes for one model")
    p.add_argument("model", help="HF checkpoint folder, .gguf file, short name, or a named config (timing-only)")
    p.add_argument("--device", default="trn1", help="comma-separated presets, e.g. trn1,inf2,ipu-gc200")
    p.add_argument("--tp", default="1,2,4,8", help="comma-separated TP degrees")
    p.add_argument(
        "--dtype",
        default=None,
        help="comma-separated weight dtypes, each optionally :activations (int4:int8 runs int4 weights "
        "with int8 activations; default: as the checkpoint stores them; native for GGUF)",
    )
    p.add_argument("--prompt-len", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-context", type=int, default=None)
    p.add_argument("--timing-only", action="store_true", help="time without weights or arithmetic")
    p.add_argument(
        "--pad-heads",
        action="store_true",
        help="pad attention heads with zero heads when they do not divide by a TP degree (on with --timing-only)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="write time per token against TP degree (.png, .svg, .pdf or .jpg)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS", help="run the points as tasks on a Ray cluster")
    sweep_slo.add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sweep_slo.check_flags(args)
    if args.plot is not None:
        writable_image(args.plot, "--plot")
    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()] if args.dtype is not None else [None]
    degrees = int_list(args.tp, "--tp", "integers, e.g. 1,2,4")
    _check_points(devices, degrees, dtypes, args)  # every point's names before any point runs
    unit = sweep_slo.workload(args) if args.slo is not None else None
    checkpoint = open_source(args.model, args.timing_only)
    configs = list(itertools.product(devices, degrees, dtypes))
    prompt = [i % checkpoint.graph.vocab_size for i in range(1, args.prompt_len + 1)]
    if args.ray is not None:  # each task opens the checkpoint itself: nothing large passes through the driver
        fn = functools.partial(_remote_point, args.model, prompt, args, unit)
    else:
        fn = functools.partial(_local_point, checkpoint, prompt, args, unit)
    needed = _needed(len(prompt), args, unit)
    what = _needs(unit)
    with derived_context_words(checkpoint.graph, needed, args.max_context, what):
        rows = run_all(
            fn, configs, ray=args.ray, desc="sweep", quiet=args.json, label=lambda p: f"{p[0]} tp={p[1]} {p[2]}"
        )
    if unit is not None:
        sweep_slo.mark_pareto([r for r in rows if r["fits"]])
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print(rows, checkpoint.name, slo=unit is not None)
    ran = any(row["fits"] for row in rows)
    if args.plot and ran and unit is not None:
        sweep_slo.plot_pareto([r for r in rows if r["fits"]], args.plot, checkpoint.name, args.slo)
    elif args.plot and ran:
        _plot(rows, args.plot, checkpoint.name)
    if not ran:  # and no plot: an empty one would pass for a result
        print("tilesim: error: no configuration of the sweep ran (the table says why)", file=sys.stderr)
        return 1
    return 0


def _check_points(devices: list[str], degrees: list[int], dtypes: list[str | None], args) -> None:
    known = preset_names()
    for name in devices:
        if name not in known and not name.endswith((".yaml", ".yml")):
            raise UnknownPreset(f"--device {name!r}: unknown device preset; known presets: {', '.join(known)}")
    if not devices or not degrees or not dtypes:
        raise ConfigError("--device, --tp and --dtype (when given) each need at least one value")
    for flag, values in (("device", devices), ("tp", degrees), ("dtype", dtypes)):
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if twice is not None:  # the same point would run again and stand twice in the table
            raise ConfigError(f"--{flag} names {twice} twice: give each value once")
    bad = [d for d in degrees if d < 1]
    if bad:
        raise ConfigError(f"--tp {bad[0]}: a tensor-parallel degree is at least 1")
    for spec in dtypes:
        weights, colon, act = (spec or "").partition(":")
        if colon and not act:  # "int8:" would silently run the default activations
            raise ConfigError(
                f"--dtype {spec!r}: name the activation dtype after ':' ({', '.join(ACT_DTYPES)}), or drop the ':'"
            )
        if weights and weights not in WEIGHT_DTYPES:
            raise ConfigError(
                f"--dtype {spec!r}: unknown weight dtype {weights!r}; use one of {', '.join(WEIGHT_DTYPES)}"
            )
        if act and act not in ACT_DTYPES:
            raise ConfigError(f"--dtype {spec!r}: unknown activation dtype {act!r}; use one of {', '.join(ACT_DTYPES)}")
    whole("prompt_len", args.prompt_len, 1, ConfigError)
    whole("max_new_tokens", args.max_new_tokens, 1, ConfigError)
    whole("max_context", args.max_context, 1, ConfigError, optional=True)
    if args.plot is not None and args.slo is None and args.max_new_tokens == 1:  # each row's time per token is n/a
        raise ConfigError(
            "--plot draws the time per token against the TP degree, and --max-new-tokens 1 makes one token, which "
            "comes from the prefill: give --max-new-tokens 2 or more"
        )
    if args.max_context is not None and args.max_context < args.prompt_len + args.max_new_tokens:
        raise ConfigError(
            f"--max-context {args.max_context} holds fewer positions than --prompt-len {args.prompt_len} plus "
            f"--max-new-tokens {args.max_new_tokens}"
        )


def _local_point(checkpoint, prompt, args, unit, point) -> dict:
    return _run_one(checkpoint, *point, prompt, args, unit)


def _remote_point(model: str, prompt, args, unit, point) -> dict:
    return _run_one(open_source(model, args.timing_only), *point, prompt, args, unit)


def _needed(prompt_len: int, args, unit) -> int:
    """The positions a point's runs use: its prompt and new tokens, and the SLO workload's requests."""
    needed = prompt_len + args.max_new_tokens
    return needed if unit is None else max(needed, sweep_slo.needed_context(unit))


def _needs(unit) -> str:
    """What needs a point's positions, in the messages about them."""
    return "the prompt and new tokens" if unit is None else "the prompt and new tokens or the SLO's requests"


def _run_one(checkpoint, preset: str, tp: int, dtype: str, prompt: list[int], args, unit=None) -> dict:
    row = {"device": preset, "tp": tp, "dtype": dtype or "default", "fits": False, "reason": ""}
    needed = _needed(len(prompt), args, unit)
    try:
        device = Device(preset, cores=tp, backed=not args.timing_only)
        context = context_for(checkpoint.graph, needed, args.max_context, _needs(unit))
        weights, _, act = (dtype or "").partition(":")
        model = load(checkpoint, device, tp, dtype=weights or None, act_dtype=act or None, max_context=context,
                     timing_only=args.timing_only, pad_heads=args.timing_only or args.pad_heads)  # fmt: skip
        out = model.generate([prompt], args.max_new_tokens, eos_token_id=None)
        if unit is not None:
            row.update(sweep_slo.slo_row(model, unit, args))
    except TilesimError as exc:
        row["reason"] = f"{type(exc).__name__}: {in_cli_words(str(exc))}"
        return row
    report = out.report
    row["dtype"] = model.dtype + (f":{act}" if act else "")
    row.update(
        fits=True,
        ttft_s=report["ttft_s"],
        tpot_s=report["itl_s"],
        tokens_per_s=report["sim_tokens_per_s"],
        memory_per_core_bytes=max(report["memory"]["per_core_peak_bytes"]),
        activations_in=report["memory"]["regions"]["activations"],
    )
    return row


def _print(rows: list[dict], name: str, slo: bool = False) -> None:
    print(f"# sweep of {name}")
    fits = [r for r in rows if r["fits"]]
    if fits and slo:
        sweep_slo.print_rows(fits)
    elif fits:
        print_table(
            [
                {
                    "device": r["device"],
                    "tp": r["tp"],
                    "dtype": r["dtype"],
                    "TTFT": fmt_time(r["ttft_s"]),
                    "time/token": fmt_time(r["tpot_s"]),
                    "tokens/s": f"{r['tokens_per_s']:.1f}",
                    "memory/core": fmt_bytes(r["memory_per_core_bytes"]),
                }
                for r in fits
            ],
            right=("TTFT", "time/token", "tokens/s", "memory/core"),
        )
    misses = [r for r in rows if not r["fits"]]
    if misses:
        print("\ndoes not run:")
        for r in misses:
            print(f"  {r['device']} tp={r['tp']} {r['dtype']}: {r['reason']}")


def _plot(rows: list[dict], path: str, name: str) -> None:
    plot_by_tp(rows, path, lambda r: r["tpot_s"] * 1e3, xlabel="tensor-parallel degree",
               ylabel="simulated time per token (ms)", title=f"{name}: time per token by TP degree")  # fmt: skip
