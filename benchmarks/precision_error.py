"""SmolLM2-135M at each precision against its fp32 run (the file's weights dequantized):
the largest |logit - fp32 logit| over the prompt's positions, relative to the largest fp32
logit, and how many of 32 greedy tokens equal fp32's before the first difference. The
table in docs/precision.md comes from this script."""

from __future__ import annotations

import numpy as np
from common import PROMPT_TEXT, machine

import tilesim
from tilesim.models.checkpoint import open_checkpoint

STEPS = 32
RUNS = [  # weights, KV cache, activations (None: the default for the weights)
    ("native", None, None),
    ("native", None, "int8"),
    ("fp16", None, None),
    ("bf16", None, None),
    ("int8", None, None),
    ("fp8", None, None),
    ("fp8_e5m2", None, None),
    ("int4", None, None),
    ("int4", None, "int8"),
    ("fp32", "fp16", None),
    ("fp32", "bf16", None),
    ("fp32", "int8", None),
    ("fp32", "fp8", None),
]


def run(checkpoint, ids, dtype, kv, act):
    model = tilesim.load(checkpoint, tilesim.Device("trn1", cores=1), 1, dtype=dtype, kv_dtype=kv, act_dtype=act)
    logits = model.generate([ids], 1, eos_token_id=None, return_logits="all").logits[0]
    tokens = model.generate([ids], STEPS, eos_token_id=None).tokens[0]
    return model.precision, logits, list(tokens)


def main() -> None:
    checkpoint = open_checkpoint("smollm2")
    ids = checkpoint.tokenizer().encode(PROMPT_TEXT)
    _, ref_logits, ref_tokens = run(checkpoint, ids, "fp32", None, None)
    print(f"# SmolLM2-135M against its fp32 run, {STEPS} greedy tokens; {machine()}")
    print(f"{'weights':10s} {'KV cache':9s} {'activations':12s} {'max rel. logit error':>21s} {'tokens equal':>13s}")
    for dtype, kv, act in RUNS:
        precision, logits, tokens = run(checkpoint, ids, dtype, kv, act)
        error = np.max(np.abs(logits - ref_logits)) / np.max(np.abs(ref_logits))
        equal = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=True)) if a != b), STEPS)
        print(f"{dtype:10s} {precision.kv:9s} {precision.activations:12s} {error:21.2g} {equal:10d}/{STEPS}")


if __name__ == "__main__":
    main()
