"""`tilesim devices`: the device presets and their key figures."""

from __future__ import annotations

import argparse
import json

from tilesim.cli.table import print_table
from tilesim.device import describe, load_preset, preset_names
from tilesim.units import fmt_bytes, fmt_flops, fmt_rate, fmt_time


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("devices", help="list device presets with their key figures")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows = [describe(load_preset(name)) for name in preset_names()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        {
            "preset": r["name"],
            "cores": str(r["cores"]) + (f" (max {r['max_cores']})" if r["max_cores"] else ""),
            "tiles x bytes": f"{r['tiles_per_core']} x {fmt_bytes(r['tile_bytes'])}",
            "off-chip": fmt_bytes(r["offchip_memory_bytes"]) if r["offchip_memory_bytes"] else "-",
            "weights in": r["weights_in"],
            "mem bw": fmt_rate(r["memory_bandwidth"]),
            "fp16 peak": fmt_flops(r["peak_flops"]["fp16"]),
            "links per core": f"{r['topology']} {r['links_per_core']} x {fmt_rate(r['link_bandwidth'])} "
            f"{fmt_time(r['link_latency'])}",
        }
        for r in rows
    ]
    print_table(table)
    print("\nFigures are per core; sources are cited in device/presets/*.yaml.")
    return 0
