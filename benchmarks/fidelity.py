"""Predicted against published: the Neuron SDK 2.18 Llama-2 rows (benchmarks/calibration/),
as `tilesim fidelity` prints them, with the machine that ran it. The presets' figures were
fitted by benchmarks/calibrate.py (docs/fidelity.md)."""

from __future__ import annotations

import sys

from common import machine

from tilesim.cli.main import main

if __name__ == "__main__":
    print(f"# {machine()}")
    sys.exit(main(["fidelity"]))
