"""Model-level numeric promises of docs/numerics.md: a rerun gives the same bits (tokens, logits,
simulated times), and the logits' hashes that tests/cpu_targets.py compares across CPU
targets (the same bits for every target on one host)."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import tilesim

PROMPT = [5, 17, 42, 8, 99, 3, 61, 23, 77, 12, 50, 31, 4, 66, 28, 90, 11]
RUNS = [("llama", 1, "fp32", None), ("llama", 3, "fp32", None), ("gpt2", 2, "fp32", None)]
RUNS += [("llama", 1, "int4", None), ("llama", 3, "int4", "int8"), ("gpt_neox", 3, "fp16", None)]


def _logits(model):
    prefill = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    out = model.generate([PROMPT], max_new_tokens=6, eos_token_id=None, return_logits=True)
    return np.concatenate([prefill.logits[0], *[step[0][None] for step in out.logits]]), out


@pytest.mark.parametrize(("arch", "tp", "dtype", "act"), RUNS)
def test_a_rerun_gives_the_same_bits(tiny_model, arch, tp, dtype, act):
    folder = str(tiny_model(arch))
    runs = []
    for _ in range(2):  # a fresh load each time: nothing carried over but numba's compiled code
        model = tilesim.load(folder, device=tilesim.Device("trn1", cores=tp), tp=tp, dtype=dtype, act_dtype=act)
        logits, out = _logits(model)
        times = [(s.phase, s.latency) for s in out.trace.steps]
        runs.append((logits.tobytes(), out.tokens[0].tolist(), times))
    assert runs[0] == runs[1]


def test_fingerprint(tiny_model):
    """Hashes of the logits of each run above; compared across targets by tests/cpu_targets.py."""
    prints = {}
    for arch, tp, dtype, act in RUNS:
        device = tilesim.Device("tiny", cores=tp)
        model = tilesim.load(str(tiny_model(arch)), device=device, tp=tp, dtype=dtype, act_dtype=act)
        logits, _ = _logits(model)
        assert np.all(np.isfinite(logits))
        prints[f"{arch} tp{tp} {dtype} act {act}"] = hashlib.sha256(logits.tobytes()).hexdigest()
    folder = os.environ.get("TILESIM_FINGERPRINTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "models.json").write_text(json.dumps(prints, indent=1, sort_keys=True))
