"""The cost of hosting the emulated cores on Ray actors (issue 19's measure).

A random Llama of about 0.85B parameters in fp32 (made with transformers, saved once under
the temp folder), TP 4, 8 greedy decode steps: the decode step's wall time in one process
and over 1, 2 and 4 local actors (a local Ray cluster on 127.0.0.1), alternating, best of
ROUNDS; the actor calls per step (one per collective and actor, all submitted at once: the
driver waits once per step) and the bytes that cross between processes per decode step.
Loading and compiling are reported apart (the actors read their own weight slices).
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from common import machine

import tilesim
from tilesim.fanout import start_local

ROUNDS, TOKENS = 3, 8
PROMPT = [1, 306, 4658, 278, 6593, 310, 2834, 338]


def billion() -> Path:
    folder = Path(tempfile.gettempdir()) / "tilesim-bench-llama-0.85b"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    gc.collect()
    return folder


def decode_step(model) -> float:
    out = model.generate([PROMPT], max_new_tokens=TOKENS, eos_token_id=None)
    return out.trace.wall["decode_s"] / (TOKENS - 1)


def bytes_per_decode_step(remote, model) -> int:
    """What one decode step moves: a run of prefill and one decode step, minus a prefill."""
    counts = []
    for tokens in (1, 2):
        before = remote.bytes_moved
        model.generate([PROMPT], max_new_tokens=tokens, eos_token_id=None)
        counts.append(remote.bytes_moved - before)
    return counts[1] - counts[0]


def main() -> None:
    import ray

    folder = billion()
    start_local(ray, 2, include_dashboard=False, log_to_driver=False)
    device = tilesim.Device("tiny", cores=4, offchip_bytes="4GiB", backed=False)
    configs = {"one process": {}}
    configs.update({f"{n} actor(s)": {"cluster": "auto", "cores_per_actor": 4 // n} for n in (1, 2, 4)})
    models, load_s = {}, {}
    for label, extra in configs.items():
        t = time.perf_counter()
        dev = tilesim.Device("tiny", cores=4, offchip_bytes="4GiB") if not extra else device
        models[label] = tilesim.load(str(folder), dev, tp=4, max_context=64, **extra)
        models[label].generate([PROMPT], max_new_tokens=2, eos_token_id=None)  # compiled, warm
        load_s[label] = time.perf_counter() - t
    best = dict.fromkeys(configs, float("inf"))
    for _ in range(ROUNDS):
        for label, model in models.items():
            best[label] = min(best[label], decode_step(model))
    print(f"# Ray actors: decode step of a 0.85B fp32 Llama at TP 4 ({machine()})")
    print(
        "| hosting | decode step (wall) | vs one process | actor stretches per step | bytes between processes "
        "per decode step | load + warm |"
    )
    print("|---|---|---|---|---|---|")
    base = best["one process"]
    for label, model in models.items():
        remote = model.remote
        calls = f"{remote.boundaries * len(remote.actors)}" if remote else "-"
        moved = "-"
        if remote:
            moved = f"{bytes_per_decode_step(remote, model) / 1e3:.1f} KB"
        print(f"| {label} | {best[label] * 1e3:.0f} ms | {best[label] / base:.2f}x | {calls} | {moved} | "
              f"{load_s[label]:.1f} s |")  # fmt: skip
    for model in models.values():
        model.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
