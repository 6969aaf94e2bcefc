"""SmolLM2-135M decode speed: transformers (eager, CPU) against tilesim, alternating in one run.

Decode only: each side generates 1 token and then NEW_TOKENS tokens from the same prompt,
greedily; the decode rate is (NEW_TOKENS - 1) / (time of the long run - time of the short
run), so prefill and loading cancel out. Both use the same thread count. tilesim runs
SmolLM2's weights dequantized to fp32, as stored (native Q4_1 blocks, fp32 activations), and
as stored with int8 activations (`--act-dtype int8`: integer dot products, as llama.cpp). Also prints the
machine's read bandwidth and the tokens/s it allows at each precision (every decode step
reads every weight once), and, when llama-cpp-python is installed (`make bench-llamacpp`),
llama.cpp on the same GGUF file.
"""

from __future__ import annotations

import time

import numpy as np
from common import NEW_TOKENS, PROMPT_TEXT, alternate, llama_cpp, machine, median, read_bandwidth

import tilesim
from tilesim.models.checkpoint import open_checkpoint, resolve

ROUNDS = 5


def decode_rate(run) -> float:
    t = time.perf_counter()
    run(1)
    short = time.perf_counter() - t
    t = time.perf_counter()
    run(NEW_TOKENS)
    long = time.perf_counter() - t
    return (NEW_TOKENS - 1) / max(long - short, 1e-9)


def transformers_runner(ids):
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve("smollm2")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    tensor = torch.tensor([ids])

    def run(n: int) -> None:
        with torch.no_grad():
            model.generate(tensor, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2)

    return run, torch.get_num_threads()


def tilesim_runner(checkpoint, ids, tp: int, dtype: str, act_dtype: str | None = None):
    model = tilesim.load(checkpoint, tilesim.Device("trn1", cores=tp), tp, dtype=dtype, act_dtype=act_dtype)
    model.generate([ids], max_new_tokens=2, eos_token_id=None)  # warm the kernels

    def run(n: int) -> None:
        model.generate([ids], max_new_tokens=n, eos_token_id=None)

    return run, model


def llama_cpp_runner(ids):
    """llama.cpp on the same file, or None (saying why) when it is not installed or crashes here."""
    import os

    Llama = llama_cpp(str(resolve("smollm2")))
    if Llama is None:
        return None

    llm = Llama(model_path=str(resolve("smollm2")), n_ctx=512, n_threads=os.cpu_count(), verbose=False)

    def run(n: int) -> None:
        llm.reset()
        for i, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):
            if i + 1 >= n:
                break

    return run


def main() -> None:
    checkpoint = open_checkpoint("smollm2")
    ids = checkpoint.tokenizer().encode(PROMPT_TEXT)
    hf, threads = transformers_runner(ids)
    runners = {"transformers fp32": hf}
    models = {}
    for label, dtype, act, tps in (
        ("fp32", "fp32", None, (1, 3)),
        ("native", "native", None, (1, 3)),
        ("int8act", "native", "int8", (1,)),
    ):
        for tp in tps:
            run, model = tilesim_runner(checkpoint, ids, tp, dtype, act)
            runners[f"tilesim {label} tp{tp}"] = run
            models[(label, tp)] = model
    llama = llama_cpp_runner(ids)
    if llama:
        runners["llama.cpp Q4_1"] = llama
    rates = alternate(runners, decode_rate, ROUNDS)
    rate = {name: median(values) for name, values in rates.items()}
    bandwidth = read_bandwidth()
    print(f"# SmolLM2-135M decode, {NEW_TOKENS} new tokens, greedy; {machine()}; torch threads {threads}")
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"{'run':24s} {'tokens/s':>9s} {'vs transformers':>16s} {'of bandwidth bound':>19s}")
    for name, r in rate.items():
        key = None if "tilesim" not in name else (name.split()[1], int(name[-1]))
        weights = None
        if key:
            weights = sum(models[key].device.cores[c].memory.used_by_kind()["weights"] for c in range(key[1]))
        elif "transformers" in name:
            weights = models[("fp32", 1)].device.cores[0].memory.used_by_kind()["weights"]
        bound = f"{r / (bandwidth / weights):.0%}" if weights else "-"
        print(f"{name:24s} {r:9.1f} {r / rate['transformers fp32']:15.2f}x {bound:>19s}")
    print(f"native Q4_1 tp1 / fp32 tp1: {rate['tilesim native tp1'] / rate['tilesim fp32 tp1']:.2f}x")
    print(
        f"native Q4_1, int8 activations, tp1 / fp32 tp1: {rate['tilesim int8act tp1'] / rate['tilesim fp32 tp1']:.2f}x"
    )
    if llama:
        print(f"native Q4_1 tp1 / llama.cpp: {rate['tilesim native tp1'] / rate['llama.cpp Q4_1']:.2f}x")
        print(
            f"native Q4_1, int8 activations, tp1 / llama.cpp: "
            f"{rate['tilesim int8act tp1'] / rate['llama.cpp Q4_1']:.2f}x"
        )
    print(f"rounds: {ROUNDS}, medians; spread: " + ", ".join(f"{n} {np.ptp(v):.1f}" for n, v in rates.items()))


if __name__ == "__main__":
    main()
