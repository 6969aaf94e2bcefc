"""Predicted against published: every row of the calibration file (benchmarks/calibration/).

For each row, the predicted end-to-end time (prefill of the input, then each decode step;
for the row without an input length, the mean time per generated token), the published
one, the error in percent, and the mean absolute error. The parameters are those of the
presets, fitted by benchmarks/calibrate.py and the same for every row of one instance.
"""

from __future__ import annotations

from pathlib import Path

from common import machine

from tilesim.fidelity import load_rows, predict

CSV = Path(__file__).parent / "calibration" / "neuron_published.csv"


def main() -> None:
    rows = [predict(row) for row in load_rows(CSV)]
    print(f"# fidelity against {CSV.name}; {machine()}")
    print(
        f"{'model':12s} {'instance':14s} {'tp':>3s} {'in':>5s} {'out':>5s} {'what':20s} {'published':>11s} "
        f"{'predicted':>11s} {'error':>7s}"
    )
    for r in rows:
        print(
            f"{r['model']:12s} {r['instance']:14s} {r['tp']:3d} {r['input_len'] or '-':>5} {r['output_len']:5d} "
            f"{r['what']:20s} {r['published_s'] * 1e3:9.1f}ms {r['predicted_s'] * 1e3:9.1f}ms "
            f"{r['error']:+7.1%}"
        )
    mae = sum(abs(r["error"]) for r in rows) / len(rows)
    print(f"mean absolute error {mae:.1%} over {len(rows)} rows")


if __name__ == "__main__":
    main()
