"""Simulated time per token and memory per core of SmolLM2 at each precision, on trn1 and
ipu-gc200 (timing-only: the bytes each format stores are what the timing model reads)."""

from __future__ import annotations

from common import machine

import tilesim
from tilesim.models.checkpoint import open_checkpoint

DTYPES = ["native", "native:int8", "fp32", "fp16", "bf16", "fp8", "int8", "int4", "int4:int8"]  # weights[:activations]


def main() -> None:
    checkpoint = open_checkpoint("smollm2")
    print(f"# SmolLM2-135M, prompt 64, 16 new tokens, simulated; {machine()}")
    print(
        f"{'device':10s} {'tp':>2s} {'dtype':11s} {'TTFT':>10s} {'per token':>10s} {'weights/core':>13s} {'saved':>6s}"
    )
    for preset in ("trn1", "ipu-gc200"):
        for tp in (1, 3):
            for dtype in DTYPES:
                device = tilesim.Device(preset, cores=tp, backed=False)
                weights, _, act = dtype.partition(":")
                model = tilesim.load(
                    checkpoint, device, tp, dtype=weights, act_dtype=act or None, timing_only=True, max_context=256
                )
                out = model.generate([[1] * 64], max_new_tokens=16, eos_token_id=None)
                r = out.report
                precision = out.trace.model["precision"]
                saved = precision["bytes_saved"] / precision["fp32_weight_bytes"]
                weights = r["memory"]["per_core"][0]["weights"]
                print(
                    f"{preset:10s} {tp:2d} {dtype:11s} {r['ttft_s'] * 1e3:8.3f}ms {r['itl_s'] * 1e3:8.3f}ms "
                    f"{weights / 2**20:10.1f}MiB {saved:6.0%}"
                )


if __name__ == "__main__":
    main()
