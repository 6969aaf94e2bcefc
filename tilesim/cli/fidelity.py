"""`tilesim fidelity`: the published rows of benchmarks/calibration/ beside what the timing
model predicts for each, with the errors and their mean: the Neuron SDK 2.18 latency rows
(trn1.32xlarge, inf2.48xlarge), gpt-fast's decode rows and the nccl-tests all-reduce curve
(a100), and PopTransformer's GPT2-XL rows on 8 IPUs in sharding mode (ipu-gc200, c600)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np
from tqdm import tqdm

from tilesim.cli.table import print_table
from tilesim.errors import ConfigError
from tilesim.fanout import usable_cores
from tilesim.profiler.output import atomic_save, image_format, writable_image
from tilesim.units import fmt_bytes, fmt_time

# The goals the Neuron rows are judged by (docs/fidelity.md): mean |error| and every row
GOAL_MEAN, GOAL_ROW = 0.15, 0.35
MAX_JOBS = 256  # a bound against a slip of the keyboard; no more processes start than groups of rows


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fidelity",
        help="predicted against published times (Neuron SDK 2.18 Llama-2 rows, gpt-fast and nccl-tests on A100, "
        "PopTransformer's GPT2-XL on IPUs)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="only rows of these devices, e.g. trn1.32xlarge,inf2.48xlarge, a100 or ipu-gc200,c600",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON: {neuron: [...], neuron_summary: {all: ..., <instance>: ...}, neuron_ttft_error_floor: "
        "{<model> on <instance>: ...}, gpu: [...], allreduce: [...], ipu: [...]}",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes the Neuron rows are predicted in (default: the cores this process may use); "
        "the figures are the same whatever the count",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="predicted against published on log axes (.png, .svg, .pdf or .jpg)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tilesim.fidelity import (
        load_allreduce_rows,
        load_gpu_rows,
        load_ipu_rows,
        load_latency_rows,
        predict_allreduce,
        predict_gpu,
        predict_ipu,
        predict_latencies,
        published_conflicts,
        smallest_worst_error,
    )

    if args.plot is not None:
        writable_image(args.plot, "--plot")
    if args.jobs is not None and not 1 <= args.jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs {args.jobs} must be at least 1 and at most {MAX_JOBS}")
    rows, gpu, curve, ipu = load_latency_rows(), load_gpu_rows(), load_allreduce_rows(), load_ipu_rows()
    if args.device is not None:
        wanted = {d.strip() for d in args.device.split(",") if d.strip()}
        known = {r.instance for r in rows} | {r.instance for r in gpu} | {r.instance for r in ipu}
        if not wanted:
            raise ConfigError(f"--device {args.device!r}: names no device; the rows are of {', '.join(sorted(known))}")
        unknown = wanted - known
        if unknown:
            raise ConfigError(
                f"--device {sorted(unknown)[0]!r}: no published rows; the rows are of {', '.join(sorted(known))}"
            )
        rows = [r for r in rows if r.instance in wanted]
        gpu = [r for r in gpu if r.instance in wanted]
        curve = [r for r in curve if r.instance in wanted]
        ipu = [r for r in ipu if r.instance in wanted]
    quiet = args.json or not sys.stderr.isatty()
    with warnings.catch_warnings():  # the tables run Llama-2 past its 4096 positions, as transformers-neuronx did
        warnings.simplefilter("ignore", UserWarning)
        jobs = args.jobs or usable_cores()
        with tqdm(total=len(rows), desc="fidelity", disable=quiet, leave=False) as bar:
            results = predict_latencies(rows, jobs=jobs, progress=bar.update)
        for result, conflicts in zip(results, published_conflicts(rows), strict=True):
            result["published_conflicts"] = conflicts
        floors = {}
        for model, instance in dict.fromkeys((r.model, r.instance) for r in rows):
            floor = smallest_worst_error([r for r in rows if (r.model, r.instance) == (model, instance)])
            if floor > 0:
                floors[f"{model} on {instance}"] = floor
        gpu_results = [predict_gpu(r) for r in gpu]
        curve_results = [predict_allreduce(r) for r in curve]
        ipu_results = [predict_ipu(r) for r in ipu]
    if args.json:
        document = {"neuron": results, "gpu": gpu_results, "allreduce": curve_results, "ipu": ipu_results}
        if results:
            document["neuron_summary"] = summaries(results)
            document["neuron_ttft_error_floor"] = floors
        print(json.dumps(document, indent=2))
    else:
        if results:
            _print(results, floors)
        if gpu_results:
            _print_gpu(gpu_results, curve_results)
        if ipu_results:
            _print_ipu(ipu_results)
    if args.plot:
        tpot_only = [{**r, "ttft_s": None, "predicted_ttft_s": None} for r in gpu_results + ipu_results]
        _plot(results + tpot_only, args.plot)
    return 0


def _print_gpu(results: list[dict], curve: list[dict]) -> None:
    print("\n# gpt-fast on A100-80GB (batch 1, 5-token prompt): published decode step against predicted")
    print_table(
        [
            {
                "model": r["model"],
                "tp": r["tp"],
                "weights": r["dtype"],
                "TPOT": fmt_time(r["tpot_s"]),
                "predicted": fmt_time(r["predicted_tpot_s"]),
                "error": f"{r['tpot_error']:+.0%}",
            }
            for r in results
        ],
        right=("tp", "TPOT", "predicted", "error"),
    )
    print(f"{len(results)} rows; {_mean_and_worst([r['tpot_error'] for r in results])}")
    if not curve:
        return
    print("\n# nccl-tests all_reduce_perf on 8 A100s (NVSwitch): published against predicted")
    print_table(
        [
            {
                "bytes": fmt_bytes(r["size_bytes"]),
                "time": fmt_time(r["time_s"]),
                "predicted": fmt_time(r["predicted_s"]),
                "error": f"{r['error']:+.0%}",
                "algorithm": r["algo"],
            }
            for r in curve
        ],
        right=("bytes", "time", "predicted", "error"),
    )
    big = [r["error"] for r in curve if r["size_bytes"] >= 1 << 20]
    small = [r["error"] for r in curve if r["size_bytes"] < 1 << 20]
    parts = [f"from 1 MiB up: {_mean_and_worst(big)}"] if big else []
    parts += [f"below 1 MiB (the latency floor): {_mean_and_worst(small)}"] if small else []
    print("; ".join(parts))


def _print_ipu(results: list[dict]) -> None:
    print("\n# PopTransformer, GPT2-XL on 8 IPUs in sharding mode (6 layers each, fp16, max length 264): decode step")
    print_table(
        [
            {
                "device": r["instance"],
                "IPUs": r["ipus"],
                "batch": r["batch"],
                "step": fmt_time(r["tpot_s"]),
                "predicted": fmt_time(r["predicted_tpot_s"]),
                "error": f"{r['tpot_error']:+.0%}",
            }
            for r in results
        ],
        right=("IPUs", "batch", "step", "predicted", "error"),
    )
    parts = []
    for instance, note in (("ipu-gc200", "fitted on these rows"), ("c600", "predicted, not fitted")):
        errors = [r["tpot_error"] for r in results if r["instance"] == instance]
        if errors:
            parts.append(f"{instance} ({note}): {_mean_and_worst(errors)}")
    print("; ".join(parts))


def _mean_and_worst(errors: list[float]) -> str:
    values = np.abs(errors)
    return f"mean |error| {values.mean():.0%} (worst {values.max():.0%})"


def summary(results: list[dict]) -> dict[str, float]:
    """Mean and largest |error| of TTFT and TPOT over the rows, and how many rows are
    beyond the goal's bound for every row."""
    out: dict[str, float] = {"rows": len(results)}
    for key in ("ttft", "tpot"):
        errors = np.abs([r[f"{key}_error"] for r in results if r[f"{key}_error"] is not None])
        out[f"{key}_mean_abs_error"] = float(errors.mean()) if errors.size else 0.0
        out[f"{key}_max_abs_error"] = float(errors.max()) if errors.size else 0.0
        out[f"{key}_rows_beyond_goal"] = int((errors > GOAL_ROW).sum())
        out[f"{key}_rows_beyond_goal_at_odds"] = sum(
            1
            for r in results
            if r[f"{key}_error"] is not None and abs(r[f"{key}_error"]) > GOAL_ROW and r.get("published_conflicts")
        )
    return out


def summaries(results: list[dict]) -> dict[str, dict[str, float]]:
    """`summary` over all rows ("all") and over each instance's."""
    instances = list(dict.fromkeys(r["instance"] for r in results))
    return {"all": summary(results)} | {i: summary([r for r in results if r["instance"] == i]) for i in instances}


def _print(results: list[dict], floors: dict[str, float]) -> None:
    print(
        "# Neuron SDK 2.18, transformers-neuronx, Llama-2 (fp16 weights, bf16 matmuls): published p50 against predicted"
    )
    numbers: dict[str, int] = {}  # each conflict once (a pair's text is on both its rows), in order
    notes: list[str] = []
    for r in results:
        for text in r.get("published_conflicts", ()):
            if text not in numbers:
                numbers[text] = len(numbers) + 1
                notes.append(f"{r['model']} on {r['instance']}: {text}")  # each text names its rows

    def marks(r: dict) -> str:
        return ",".join(str(numbers[text]) for text in r.get("published_conflicts", ()))

    print_table(
        [
            {
                "model": r["model"],
                "instance": r["instance"],
                "tp": r["tp"],
                "batch": r["batch"],
                "in": r["input_len"],
                "out": r["output_len"],
                "TTFT": fmt_time(r["ttft_s"]),
                "predicted": fmt_time(r["predicted_ttft_s"]),
                "error": f"{r['ttft_error']:+.0%}",
                "TPOT": fmt_time(r["tpot_s"]),
                "predicted ": fmt_time(r["predicted_tpot_s"]),
                "error ": f"{r['tpot_error']:+.0%}" if r["tpot_error"] is not None else "n/a",
            }
            | ({"at odds": marks(r)} if notes else {})
            for r in results
        ],
        right=("tp", "batch", "in", "out", "TTFT", "predicted", "error", "TPOT", "predicted ", "error "),
    )
    if notes:
        print("Published rows at odds with other published rows, from their figures alone (docs/fidelity.md):")
        for n, text in enumerate(notes, 1):
            print(f"  {n}. {text}")
        for group, floor in floors.items():
            print(f"  Whatever the timing model, one TTFT of {group} is at least {floor:.0%} off.")
    groups = summaries(results)
    for name, s in groups.items():
        if name != "all" and len(groups) == 2:
            continue  # one instance: its lines are the whole table's
        label = "" if name == "all" else f"  {name}: "
        print(
            f"{label}{s['rows']} rows; mean |error| TTFT {s['ttft_mean_abs_error']:.1%} "
            f"(worst {s['ttft_max_abs_error']:.0%}), TPOT {s['tpot_mean_abs_error']:.1%} "
            f"(worst {s['tpot_max_abs_error']:.0%}); rows beyond {GOAL_ROW:.0%}: TTFT {s['ttft_rows_beyond_goal']}"
            f"{_at_odds(s, 'ttft')}, TPOT {s['tpot_rows_beyond_goal']}{_at_odds(s, 'tpot')}"
        )
    print(
        f"goals: {GOAL_MEAN:.0%} mean |error|, no row beyond {GOAL_ROW:.0%}; docs/fidelity.md says which "
        "rows stay off, and why"
    )


def _at_odds(s: dict, key: str) -> str:
    n = s[f"{key}_rows_beyond_goal_at_odds"]
    return f" ({n} at odds with other published rows)" if n else ""


def _plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for key, marker in (("ttft", "o"), ("tpot", "s")):
        for odd in (False, True):
            pairs = [
                (r[f"{key}_s"], r[f"predicted_{key}_s"])
                for r in results
                if r.get(f"predicted_{key}_s") and bool(r.get("published_conflicts")) == odd
            ]
            if not pairs and odd:
                continue
            published, predicted = zip(*pairs, strict=True) if pairs else ((), ())
            if odd:  # hollow: the published row contradicts other published rows
                label = f"{key.upper()}, rows at odds with other rows"
                ax.scatter(published, predicted, marker=marker, label=label, facecolors="none", edgecolors="C3")
            else:
                ax.scatter(published, predicted, marker=marker, label=key.upper(), alpha=0.75)
    values = [v for r in results for v in (r["ttft_s"], r["tpot_s"], r["predicted_ttft_s"], r["predicted_tpot_s"]) if v]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, label="exact")
    for factor in (1.15, 1 / 1.15):
        ax.plot([lo, hi], [lo * factor, hi * factor], color="grey", linewidth=0.5, linestyle="--")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="published (s)", ylabel="predicted (s)")
    title = "Published rows (Neuron SDK 2.18, gpt-fast, PopTransformer):\npredicted against published (dashed: ±15%)"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda temporary: fig.savefig(temporary, dpi=110, format=image_format(path)))
    plt.close(fig)
