"""Decode speed of the emulator against the tensor-parallel degree (issue 20's measure).

The work per token is the same at every degree (the same weights are read once, the
all-reduces move a few KB), so a flat curve is the goal. For SmolLM2 (fp32 and native
Q4_1) at TP 1, 2, 3, 4, 6, 9 (heads padded where its 9 do not divide) and a tiny random
Llama (32 heads, made with transformers) at TP 1 to 32: decode tokens/s (wall clock, best
of ROUNDS, the degrees taking turns, prefill excluded); "paired", the median over the rounds
of the rate over TP 1's in the same round (less sensitive to one fast round); and one
instrumented decode step split into the kernels, the collectives (all-reduce replays and the
logits gather) and the rest (Python dispatch between the closures). Writes scaling.png.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from common import PROMPT_TEXT, machine

import tilesim
from tilesim.models.checkpoint import open_checkpoint

ROUNDS, TOKENS = 5, 24


def decode_rates(models: list, ids) -> tuple[list[float], list[float]]:
    """Decode tokens/s of each model as generate measures its decode steps alone (a difference
    of two runs' wall times went negative on a noisy host): the best of ROUNDS, and the
    median over the rounds of its rate over the first model's in the same round. The models
    take turns within each round, so a slow spell of the host falls on every degree alike."""
    rates = [[0.0] * ROUNDS for _ in models]
    for r in range(ROUNDS):
        for i, model in enumerate(models):
            out = model.generate([ids], max_new_tokens=TOKENS, eos_token_id=None)
            rates[i][r] = out.trace.wall["decode_tokens_per_s"]
    paired = [float(np.median(np.array(mine) / np.array(rates[0]))) for mine in rates]
    return [max(mine) for mine in rates], paired


def split_step(model, ids) -> dict[str, float]:
    """Seconds of one decode step in kernels, collectives and the rest (the closures timed one by one)."""
    executor = model.executor
    kinds = [step.kind for step in model.program.steps if not (step.kind == "allreduce" and model.tp == 1)]
    spent = {"kernels": 0.0, "collectives": 0.0}
    original = list(executor.ops)

    def timed(op, kind):
        def run(inputs):
            t = time.perf_counter()
            op(inputs)
            if inputs.tokens == 1:  # decode steps only: the prefill's rows are the prompt's
                spent["collectives" if kind in ("allreduce", "gather_logits") else "kernels"] += time.perf_counter() - t

        return run

    executor.ops = [timed(op, kind) for op, kind in zip(original, kinds, strict=True)]
    try:
        model.generate([ids], max_new_tokens=2, eos_token_id=None)  # warm
        for key in spent:
            spent[key] = 0.0
        out = model.generate([ids], max_new_tokens=TOKENS, eos_token_id=None)
        steps = TOKENS - 1
        wall = out.trace.wall["decode_s"] / steps
        step = {key: spent[key] / steps for key in spent}
    finally:
        executor.ops = original
    step["rest"] = max(0.0, wall - step["kernels"] - step["collectives"])
    return step


def tiny_llama(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=512, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def main() -> None:
    print(f"# decode speed against the TP degree; {machine()}; {TOKENS} tokens, best of {ROUNDS}")
    print(
        f"{'model':22s} {'tp':>3s} {'tokens/s':>9s} {'/ tp1':>6s} {'paired':>7s} {'kernels':>9s} {'collect.':>9s} "
        f"{'rest':>9s}"
    )
    checkpoint = open_checkpoint("smollm2")
    ids = checkpoint.tokenizer().encode(PROMPT_TEXT)
    curves, medians = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_llama(Path(tmp) / "tiny")
        cases = [("smollm2 fp32", checkpoint, "fp32", (1, 2, 3, 4, 6, 9), ids)]
        cases += [("smollm2 native", checkpoint, "native", (1, 2, 3, 4, 6, 9), ids)]
        cases += [("tiny llama fp32", str(tiny), "fp32", (1, 2, 4, 8, 16, 32), list(range(1, 17)))]
        for label, source, dtype, degrees, prompt in cases:
            models = [
                tilesim.load(source, device=tilesim.Device("trn1", cores=tp), tp=tp, dtype=dtype, pad_heads=True)
                for tp in degrees
            ]  # SmolLM2: 9 heads, padded where a degree does not divide them
            rates, paired = decode_rates(models, prompt)
            for tp, model, rate, ratio in zip(degrees, models, rates, paired, strict=True):
                step = split_step(model, prompt)
                curves.setdefault(label, []).append((tp, rate))
                print(
                    f"{label:22s} {tp:3d} {rate:9.1f} {rate / rates[0]:6.2f} {ratio:7.2f} "
                    f"{step['kernels'] * 1e3:7.2f}ms {step['collectives'] * 1e3:7.2f}ms {step['rest'] * 1e3:7.2f}ms"
                )
                medians.setdefault(label, []).append(ratio)
            del models
    _plot(curves, Path(__file__).parent / "scaling.png")
    worst = {label: min(r for _, r in c) / c[0][1] for label, c in curves.items()}
    print("slowest degree / tp 1 (best of each): " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    print(
        "slowest degree / tp 1 (median of the rounds' ratios): "
        + ", ".join(f"{k} {min(v):.2f}" for k, v in medians.items())
    )


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        tps, rates = zip(*points, strict=True)
        ax.plot(tps, np.array(rates) / rates[0], marker="o", label=label)
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.axhline(0.8, color="grey", linewidth=0.5, linestyle="--")
    ax.set(xscale="log", xlabel="tensor-parallel degree", ylabel="decode tokens/s, relative to TP 1")
    ax.set_title("emulator decode speed against the TP degree")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
