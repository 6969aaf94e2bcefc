"""SmolLM2-135M prefill speed of a long prompt: transformers (eager, CPU) against tilesim,
alternating in one run.

Each side computes the logits of a prompt of TOKENS tokens (transformers: one forward pass;
tilesim: `generate` of one token, which is the prefill). tilesim runs SmolLM2's native Q4_1
blocks at TP 1 and 3; transformers the same weights dequantized to fp32. A prefill is bound
by arithmetic, not by reading the weights, so the bound printed is the machine's own fp32
matrix product (numpy's BLAS on 2048 x 2048) against the prompt's multiply-adds (2 per
weight and token, plus attention's 4 per head dimension, key position and query). llama.cpp
on the same GGUF file when llama-cpp-python is installed (`make bench-llamacpp`).
Usage: python prefill_speed.py [TOKENS] (default 1024).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from common import alternate, llama_cpp, machine, median

import tilesim
from tilesim.models.checkpoint import open_checkpoint, resolve

ROUNDS = 3


def seconds(run) -> float:
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    return 2 * n**3 / min(seconds(lambda: a @ a) for _ in range(repeats))


def transformers_runner(ids):
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve("smollm2")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tensor = torch.tensor([ids])

    def run() -> None:
        with torch.no_grad():
            model(tensor, logits_to_keep=1)

    return run, torch.get_num_threads()


def tilesim_runner(checkpoint, ids, tp: int):
    model = tilesim.load(
        checkpoint, tilesim.Device("trn1", cores=tp), tp, dtype="native", max_context=len(ids) + 1,
        prefill_buckets=[len(ids)],
    )  # fmt: skip
    model.generate([ids[:8]], max_new_tokens=1)  # compile the kernels

    def run() -> None:
        model.generate([ids], max_new_tokens=1)

    return run


def llama_cpp_runner(ids):
    """llama.cpp on the same file, or None (saying why) when it is not installed or crashes here."""
    import os

    Llama = llama_cpp(str(resolve("smollm2")))
    if Llama is None:
        return None

    llm = Llama(model_path=str(resolve("smollm2")), n_ctx=len(ids) + 8, n_batch=len(ids), n_threads=os.cpu_count(),
                verbose=False)  # fmt: skip

    def run() -> None:
        llm.reset()
        llm.eval(ids)

    return run


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    checkpoint = open_checkpoint("smollm2")
    ids = [int(i) for i in np.random.default_rng(0).integers(1000, 40000, size=tokens)]
    hf, threads = transformers_runner(ids)
    runners = {"transformers fp32": hf}
    for tp in (1, 3):
        runners[f"tilesim native tp{tp}"] = tilesim_runner(checkpoint, ids, tp)
    llama = llama_cpp_runner(ids)
    if llama:
        runners["llama.cpp Q4_1"] = llama
    times = alternate(runners, seconds, ROUNDS)
    graph = checkpoint.graph
    # each token meets every layer's weight matrices once (the embedding is a lookup, the LM head one row)
    products = sum(int(np.prod(p.shape)) for n, p in graph.params.items() if len(p.shape) == 2 and n != "embed.weight")
    attention = 4 * graph.head_dim * graph.heads * tokens * (tokens + 1) / 2 * graph.layers
    work = 2 * products * tokens + attention
    peak = matmul_flops()
    took = {name: median(values) for name, values in times.items()}
    print(f"# SmolLM2-135M prefill of {tokens} tokens; {machine()}; torch threads {threads}")
    print(f"fp32 matrix product (numpy) {peak / 1e9:.1f} GFLOP/s; the prompt is {work / 1e12:.2f} T multiply-add flops")
    print(f"{'run':24s} {'seconds':>8s} {'tokens/s':>9s} {'vs transformers':>16s} {'of matmul bound':>16s}")
    for name, s in took.items():
        print(f"{name:24s} {s:8.2f} {tokens / s:9.1f} {took['transformers fp32'] / s:15.2f}x {work / s / peak:16.0%}")
    if llama:
        print(f"native Q4_1 tp1 / llama.cpp: {took['llama.cpp Q4_1'] / took['tilesim native tp1']:.2f}x")
    print(f"rounds: {ROUNDS}, medians; spread: " + ", ".join(f"{n} {np.ptp(v):.2f} s" for n, v in times.items()))


if __name__ == "__main__":
    main()
