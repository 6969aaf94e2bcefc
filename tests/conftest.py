"""Shared test settings: hypothesis profiles (bounded by default, deeper with TILESIM_DEEP=1,
fewer examples with TILESIM_QUICK=1), the one rule of greedy-token tests (`greedy_rule`),
and tiny random checkpoints made with transformers (seeded `from_config` + `save_pretrained`).
A run of most of the suite starts tests/compile_ahead.py beside it (TILESIM_COMPILE_AHEAD=0: not).

Heads are chosen so each architecture has several tensor-parallel degrees, an odd one among
them; the Llama family uses grouped-query attention.
"""

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("deep", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# make test-targets runs the kernel tests once per CPU target: fewer examples each
settings.register_profile(
    "quick", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
PROFILE = "deep" if os.environ.get("TILESIM_DEEP") else "quick" if os.environ.get("TILESIM_QUICK") else "default"
settings.load_profile(PROFILE)

# A run of most of the suite compiles, beside it, the kernels its later tests need
# (tests/compile_ahead.py); a run of a few files does not pay for that.
COMPILE_AHEAD_FROM = 600  # tests collected
_ahead: list = []


def pytest_collection_finish(session):
    import subprocess
    import sys

    few = len(session.items) < COMPILE_AHEAD_FROM or session.config.option.collectonly
    if few or os.environ.get("TILESIM_COMPILE_AHEAD") == "0":
        return
    script = Path(__file__).with_name("compile_ahead.py")
    _ahead.append(subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def pytest_sessionfinish(session):
    for process in _ahead:
        process.kill()  # numba writes a cache file whole (a temporary file renamed): nothing half-written stays
        process.wait()


VOCAB = 101
# RWKV's recurrence exponentiates its keys: at 3x the initializer's scale a rounding of k is
# amplified far past what trained checkpoints see, so it keeps the initializer's scale
WEIGHT_SCALE = {"rwkv": 1.0}
# norm weights that differ feature by feature (initialised all 1): a norm weight read into the
# wrong place, or the wrong norm's, changes the logits
VARIED_NORMS = ("qwen3", "qwen3_gguf", "qwen3_moe", "qwen3_moe_gguf")


def configs():
    import transformers as T

    common = {"vocab_size": VOCAB}
    # widths that are whole 32-value blocks, for the quantized GGUF types
    gqa = {  # 6 query heads in 3 groups, 48 wide: the Llama family's tiny shape
        "hidden_size": 48, "intermediate_size": 88, "num_hidden_layers": 2, "num_attention_heads": 6,
        "num_key_value_heads": 3, "max_position_embeddings": 256,
    }  # fmt: skip
    moe = {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2}  # the tiny Qwen3-MoEs' heads and mixture
    gguf_llama = {
        "hidden_size": 96, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6,
        "num_key_value_heads": 3, "max_position_embeddings": 256, "vocab_size": 128,
    }  # fmt: skip
    return {
        "llama": (T.LlamaConfig(**gqa, **common), [1, 3, 6]),
        "glm": (  # partial rotary in neighbouring pairs, biased Q/K/V, fused gate/up, 3 query groups
            T.GlmConfig(
                hidden_size=48,
                intermediate_size=80,
                num_hidden_layers=2,
                num_attention_heads=6,
                num_key_value_heads=3,
                head_dim=8,
                max_position_embeddings=256,
                pad_token_id=0,
                **common,
            ),
            [1, 3, 6],
        ),
        "bloom": (  # 6 heads: slopes from 4 and the interleaved 8-series; TP 1, 2, 3, 6
            T.BloomConfig(hidden_size=48, n_layer=2, n_head=6, **common),
            [1, 2, 3, 6],
        ),
        "mixtral": (  # 4 experts, 2 per token; expert widths split unevenly at TP 3 and 6
            T.MixtralConfig(
                hidden_size=48,
                intermediate_size=40,
                num_hidden_layers=2,
                num_attention_heads=6,
                num_key_value_heads=3,
                num_local_experts=4,
                num_experts_per_tok=2,
                max_position_embeddings=256,
                **common,
            ),
            [1, 3, 6],
        ),
        "rwkv": (  # RWKV-4; rescale_every=2 over 4 layers exercises transformers' inference rescaling
            T.RwkvConfig(
                hidden_size=48,
                num_hidden_layers=4,
                attention_hidden_size=48,
                intermediate_size=96,
                context_length=256,
                rescale_every=2,
                **common,
            ),
            [1, 2, 3, 5],
        ),
        "llama_gguf": (T.LlamaConfig(**gguf_llama), [1, 3, 6]),
        "llama_gguf_256": (  # rows of 256 weights: one K-quant super-block (Q4_K, Q6_K)
            T.LlamaConfig(
                hidden_size=256,
                intermediate_size=512,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                vocab_size=128,
            ),
            [1, 2, 4],
        ),
        # rope scaling: head_dim 16 has 8 frequencies, with wavelengths of 6 to 20,000 positions; an
        # original context of 64 leaves the first unscaled, smooths two and divides five
        "llama3_rope": (
            T.LlamaConfig(
                **gguf_llama,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 10000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            ),
            [1, 3],
        ),
        "llama_linear_rope": (
            T.LlamaConfig(**gguf_llama, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
            [1, 3],
        ),
        # YaRN over an original context of 64: with beta 32 and 1, the 8 frequencies of head_dim 16
        # are kept (2), ramped (3) and divided by the factor (3); cos and sin scaled by 1.139
        "llama_yarn": (
            T.LlamaConfig(
                **gguf_llama,
                rope_parameters={
                    "rope_type": "yarn",
                    "rope_theta": 10000.0,
                    "factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            ),
            [1, 3],
        ),
        # DeepSeek's form: the attention factor from mscale / mscale_all_dim, other betas, no truncation
        "llama_yarn_mscale": (
            T.LlamaConfig(
                **gguf_llama,
                rope_parameters={
                    "rope_type": "yarn",
                    "rope_theta": 10000.0,
                    "factor": 8.0,
                    "original_max_position_embeddings": 32,
                    "mscale": 1.0,
                    "mscale_all_dim": 0.5,
                    "beta_fast": 16,
                    "beta_slow": 2,
                    "truncate": False,
                },
            ),
            [1, 3],
        ),
        # dynamic NTK: transformers keeps the plain frequencies up to max_position_embeddings
        "llama_dynamic": (
            T.LlamaConfig(**gqa, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
            [1, 3],
        ),
        # Qwen2.5's long-context setting (given as `rope_scaling`; transformers saves `rope_parameters`)
        "qwen2_yarn": (
            T.Qwen2Config(
                **gqa, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, **common
            ),
            [1, 3],
        ),
        # heads 32 wide where hidden / heads is 16 (GGUF: attention.key_length)
        "llama_head_dim": (T.LlamaConfig(**gguf_llama, head_dim=32), [1, 3]),
        "llama_gguf_wide": (  # head_dim 32: padded heads are whole 32-column blocks
            T.LlamaConfig(
                hidden_size=192,
                intermediate_size=192,
                num_hidden_layers=2,
                num_attention_heads=6,
                num_key_value_heads=3,
                max_position_embeddings=256,
                vocab_size=128,
            ),
            [1, 3, 6],
        ),
        "llama_gqa10": (  # 10 query / 2 key-value heads: runs at TP 4 and 5 only padded
            T.LlamaConfig(
                hidden_size=80,
                intermediate_size=88,
                num_hidden_layers=2,
                num_attention_heads=10,
                num_key_value_heads=2,
                max_position_embeddings=256,
                **common,
            ),
            [1, 2, 10],
        ),
        "llama_deep": (  # five layers, grouped queries: pipeline stages of one to three layers
            T.LlamaConfig(
                hidden_size=48,
                intermediate_size=88,
                num_hidden_layers=5,
                num_attention_heads=6,
                num_key_value_heads=2,
                max_position_embeddings=256,
                **common,
            ),
            [1, 2, 3, 6],
        ),
        "mistral": (
            T.MistralConfig(
                hidden_size=48,
                intermediate_size=88,
                num_hidden_layers=2,
                num_attention_heads=6,
                num_key_value_heads=2,
                max_position_embeddings=256,
                sliding_window=12,
                **common,
            ),
            [1, 2, 6],
        ),
        "qwen2": (T.Qwen2Config(**gqa, tie_word_embeddings=True, **common), [1, 3]),
        # an RMS norm over each query and key head (q_norm, k_norm), head_dim given
        "qwen3": (T.Qwen3Config(**gqa, head_dim=16, tie_word_embeddings=True, **common), [1, 3]),
        # 4 experts, 2 per token, weights as the softmax gave them; layer 1 keeps a dense MLP
        "qwen3_moe": (
            T.Qwen3MoeConfig(
                **gqa,
                **moe,
                moe_intermediate_size=40,
                norm_topk_prob=False,
                mlp_only_layers=[1],
                **common,
            ),
            [1, 3],
        ),
        # as llama.cpp's qwen3moe holds one: every layer's MLP a mixture, the weights renormalised
        # (Qwen3-30B-A3B's norm_topk_prob); 64 wide, for the 32-value blocks of the quantized types
        "qwen3_moe_gguf": (
            T.Qwen3MoeConfig(
                **{**gguf_llama, "hidden_size": 64},
                **moe,
                moe_intermediate_size=32,
                norm_topk_prob=True,
            ),
            [1, 3],
        ),
        # transformers reads a qwen3 GGUF's heads as Qwen3Config's default 128 wide (it ignores
        # attention.key_length): the GGUF test's model has heads of 128
        "qwen3_gguf": (
            T.Qwen3Config(
                hidden_size=256,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=128,
                max_position_embeddings=256,
                tie_word_embeddings=True,
                **common,
            ),
            [1, 2],
        ),
        "gpt2": (T.GPT2Config(n_embd=48, n_layer=2, n_head=6, n_positions=256, **common), [1, 2, 3, 6]),
        "opt": (
            T.OPTConfig(
                hidden_size=48,
                ffn_dim=88,
                num_hidden_layers=2,
                num_attention_heads=6,
                max_position_embeddings=256,
                word_embed_proj_dim=48,
                **common,
            ),
            [1, 3],
        ),
        "gptj": (T.GPTJConfig(n_embd=48, n_layer=2, n_head=6, rotary_dim=4, n_positions=256, **common), [1, 2, 3]),
        "gpt_neox": (
            T.GPTNeoXConfig(
                hidden_size=48,
                intermediate_size=88,
                num_hidden_layers=2,
                num_attention_heads=6,
                max_position_embeddings=256,
                rotary_pct=0.5,
                **common,
            ),
            [1, 3, 6],
        ),
        "gpt_neox_sequential": (
            T.GPTNeoXConfig(
                hidden_size=48,
                intermediate_size=88,
                num_hidden_layers=2,
                num_attention_heads=6,
                max_position_embeddings=256,
                rotary_pct=1.0,
                use_parallel_residual=False,
                **common,
            ),
            [2],
        ),
    }


def save_tiny(name: str, folder: Path, seed: int = 0) -> Path:
    """Save the tiny `name` model into `folder` and return it (idempotent)."""
    import torch
    from transformers import AutoModelForCausalLM

    if (folder / "config.json").is_file():
        return folder
    config, _ = configs()[name]
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random weights at initializer scale give near-uniform logits; spread them
        for p in model.parameters():
            p.mul_(WEIGHT_SCALE.get(name, 3.0))
        if name in VARIED_NORMS:
            for param_name, p in model.named_parameters():
                if p.ndim == 1 and "norm" in param_name:
                    p.mul_(1 + 0.3 * torch.randn_like(p))
    model.save_pretrained(folder)
    _save_word_tokenizer(folder)
    return folder


def _save_word_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the tiny vocabulary, so text prompts work end to end."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    template = (
        "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}w7 {% endif %}"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template})
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(name) -> folder of a saved tiny random checkpoint (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")

    def make(name: str) -> Path:
        return save_tiny(name, root / name)

    return make


@pytest.fixture(scope="session")
def weight_group():
    """weight_group(rng, fmts, m, k, with_bias) -> (packs, biases, outs): random weights of
    the given formats that read one x (m, k), their biases (or None) and NaN-filled outputs."""
    import numpy as np

    from tilesim.device.kernels import quant

    def make(rng, fmts, m, k, with_bias):
        packs, biases, outs = [], [], []
        for fmt in fmts:
            n = int(rng.integers(1, 50))
            packs.append(quant.pack((rng.standard_normal((n, k)) * 2).astype(np.float32), fmt))
            biases.append(rng.standard_normal(n).astype(np.float32) if with_bias else None)
            outs.append(np.full((m, n), np.nan, np.float32))
        return packs, biases, outs

    return make


class CloseCall(UserWarning):
    """A token test compared fewer steps than it ran: the reference's best two logits were
    closer than the numeric bound at some step, so either choice there is right."""


def greedy_agrees(tokens, ref_tokens, ref_logits, rtol: float, label: str = "") -> int:
    """The one rule of every greedy-token test (docs/numerics.md). A step is a close call when
    the reference's best two logits are within twice the numeric bound (`rtol` times that
    step's largest |logit|: each side may be off by one bound). Our tokens must equal the
    reference's at every step that is not a close call; at a close call ours must be one of
    the tied tokens, and if it is not the reference's, the sequences may part there, so the
    comparison stops. Returns the number of steps compared; warns (`CloseCall`) when it stopped early."""
    import warnings

    import numpy as np

    tokens, ref_tokens = [int(t) for t in tokens], [int(t) for t in ref_tokens]
    assert len(tokens) == len(ref_tokens), f"{label}: {len(tokens)} tokens, the reference has {len(ref_tokens)}"
    for step, logits in enumerate(ref_logits[: len(ref_tokens)]):
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        margin = 2 * rtol * np.max(np.abs(logits))
        second, best = np.sort(logits)[-2:]
        if best - second > margin or tokens[step] == ref_tokens[step]:
            seen = f"{tokens[: step + 1]} vs {ref_tokens[: step + 1]}"
            assert tokens[step] == ref_tokens[step], f"{label}: step {step}: {seen}"
            continue
        tied = set(np.flatnonzero(logits >= best - margin).tolist())
        assert tokens[step] in tied, f"{label}: step {step} chose {tokens[step]}, not one of the tied {sorted(tied)}"
        warnings.warn(
            f"{label}: compared {step} of {len(tokens)} greedy steps; at step {step} the reference's best two "
            f"logits are {best - second:.3g} apart, within twice the bound ({margin:.3g}), and we chose the other",
            CloseCall,
            stacklevel=2,
        )
        return step
    return len(tokens)


@pytest.fixture(scope="session")
def greedy_rule():
    """greedy_rule(tokens, ref_tokens, ref_logits, rtol, label) -> steps compared (see greedy_agrees)."""
    return greedy_agrees


@pytest.fixture(scope="session")
def smollm2_transformers():
    """(tokenizer, model): transformers' own reading of the SmolLM2 GGUF file in fp32, greedy
    without an end of sequence. Built once. Tests must not change it.

    transformers parses the file's 49k-token vocabulary in Python once for the tokenizer and
    twice for the model, and builds gguf's tensor-name table once per module of the model
    (about 60 s in all here). While it builds the reference, gguf's reader is kept per file and
    its name table per architecture: both are read-only to transformers and depend only on
    their arguments, so the reference is the same, in about half the time."""
    import functools

    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tilesim.models.checkpoint import resolve

    path = resolve("smollm2")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", functools.cache(gguf.GGUFReader))
        patch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 2
    return tokenizer, model
