"""`tilesim fidelity`: the published Neuron SDK 2.18 latency rows (benchmarks/calibration/)
beside what the timing model predicts for each, with the errors and their mean."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np
from tqdm import tqdm

from tilesim.cli.table import print_table
from tilesim.errors import ConfigError
from tilesim.profiler.output import atomic_save, writable_file
from tilesim.units import fmt_time


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fidelity",
        help="predicted against published time to first token and per token (Neuron SDK 2.18 Llama-2 rows)",
    )
    p.add_argument("--device", default=None, help="only rows of these instances, e.g. trn1.32xlarge,inf2.48xlarge")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument("--plot", default=None, metavar="PATH", help="predicted against published on log axes (PNG)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tilesim.fidelity import load_latency_rows, predict_latency

    if args.plot:
        writable_file(args.plot, "--plot")
    rows = load_latency_rows()
    if args.device:
        wanted = {d.strip() for d in args.device.split(",") if d.strip()}
        known = {r.instance for r in rows}
        unknown = wanted - known
        if unknown:
            raise ConfigError(
                f"--device {sorted(unknown)[0]!r}: no published rows; the rows are of {', '.join(sorted(known))}"
            )
        rows = [r for r in rows if r.instance in wanted]
    results = []
    with warnings.catch_warnings():  # the tables run Llama-2 past its 4096 positions, as transformers-neuronx did
        warnings.simplefilter("ignore", UserWarning)
        for row in tqdm(rows, desc="fidelity", disable=args.json or not sys.stderr.isatty(), leave=False):
            results.append(predict_latency(row))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)
    if args.plot:
        _plot(results, args.plot)
    return 0


def summary(results: list[dict]) -> dict[str, float]:
    """Mean and largest |error| of TTFT and TPOT over the rows."""
    out = {}
    for key in ("ttft", "tpot"):
        errors = [abs(r[f"{key}_error"]) for r in results if r[f"{key}_error"] is not None]
        out[f"{key}_mean_abs_error"] = float(np.mean(errors)) if errors else 0.0
        out[f"{key}_max_abs_error"] = float(np.max(errors)) if errors else 0.0
    return out


def _print(results: list[dict]) -> None:
    print(
        "# Neuron SDK 2.18, transformers-neuronx, Llama-2 (fp16 weights, bf16 matmuls): published p50 against predicted"
    )
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
            for r in results
        ],
        right=("tp", "batch", "in", "out", "TTFT", "predicted", "error", "TPOT", "predicted ", "error "),
    )
    s = summary(results)
    print(
        f"{len(results)} rows; mean |error| TTFT {s['ttft_mean_abs_error']:.0%} (worst {s['ttft_max_abs_error']:.0%}), "
        f"TPOT {s['tpot_mean_abs_error']:.0%} (worst {s['tpot_max_abs_error']:.0%}); docs/fidelity.md says what the "
        "model leaves out"
    )


def _plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for key, marker in (("ttft", "o"), ("tpot", "s")):
        pairs = [(r[f"{key}_s"], r[f"predicted_{key}_s"]) for r in results if r[f"predicted_{key}_s"]]
        published, predicted = zip(*pairs, strict=True) if pairs else ((), ())
        ax.scatter(published, predicted, marker=marker, label=key.upper(), alpha=0.75)
    values = [v for r in results for v in (r["ttft_s"], r["tpot_s"], r["predicted_ttft_s"], r["predicted_tpot_s"]) if v]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, label="exact")
    for factor in (1.15, 1 / 1.15):
        ax.plot([lo, hi], [lo * factor, hi * factor], color="grey", linewidth=0.5, linestyle="--")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="published (s)", ylabel="predicted (s)")
    ax.set_title("Neuron SDK 2.18 Llama-2 rows: predicted against published\n(dashed: ±15%)")
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    plt.close(fig)
