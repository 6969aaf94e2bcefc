"""GGUF checkpoints: a tiny Llama written as llama.cpp writes it (Q/K rows permuted, some
tensors quantized), loaded by tilesim and by transformers from the same file."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import tilesim
from tilesim.errors import CheckpointError

from .gguf_files import write_gguf

gguf = pytest.importorskip("gguf")
PROMPT = [5, 17, 42, 8, 99, 3, 61, 23, 77, 12]


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("tp", [1, 3])
def test_gguf_logits_match_transformers_loading_the_same_file(tiny_model, tmp_path, qtype, tp):
    folder = tiny_model("llama_gguf")
    path = write_gguf(folder, tmp_path / f"tiny-{qtype}.gguf", qtype)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp)
    out = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert out.logits[0].shape == ref.shape
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("tp", [1, 2])
def test_a_type_without_a_kernel_is_dequantized_gives_the_files_logits_and_says_what_it_costs(
    tiny_model, tmp_path, qtype, tp
):
    """K-quants (the bulk of a Q4_K_M download) are read dequantized: transformers' logits on
    the same file, and a note that the weights are held and timed as fp32: 32 bits against
    the file's 4.5 (Q4_K: 144 bytes per 256 weights) or 6.5625 (Q6_K: 210 bytes)."""
    path = write_gguf(tiny_model("llama_gguf_256"), tmp_path / f"tiny-{qtype}.gguf", qtype)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp)
    out = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))
    bits = {"Q4_K": 144 * 8 / 256, "Q6_K": 210 * 8 / 256}[qtype]
    # every 2-D tensor: token embedding, lm_head, 7 projections in each of 2 layers
    (note,) = [n for n in out.report["memory"]["notes"] if "dequantized at load" in n]
    assert f"16 {qtype} tensors" in note and f"{32 / bits:.1f}x their bytes" in note
    fp32 = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp, dtype="fp32")
    as_fp32 = fp32.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    for key in ("ttft_s", "weights"):
        assert out.report.get(key) == as_fp32.report.get(key)
    assert out.report["memory"]["per_core"] == as_fp32.report["memory"]["per_core"]


def llama3_rope_factors(cfg: dict) -> np.ndarray:
    """The divisor of each rotary frequency, as llama.cpp's converter writes Llama 3.1's rope
    scaling into a GGUF (`rope_freqs.weight`); written out from its description."""
    rope = cfg["rope_parameters"]
    dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, dim, 2) / dim)
    old, low, high = rope["original_max_position_embeddings"], rope["low_freq_factor"], rope["high_freq_factor"]
    factors = []
    for wavelen in 2 * np.pi / freqs:
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(rope["factor"])
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


@pytest.mark.parametrize("tp", [1, 3])
def test_llama3_rope_scaling_stored_as_frequency_factors_gives_the_checkpoints_logits(tiny_model, tmp_path, tp):
    """transformers ignores `rope_freqs.weight` when it loads a GGUF (llama.cpp does not), so the
    reference is transformers on the checkpoint the file was converted from."""
    import json

    folder = tiny_model("llama3_rope")
    factors = llama3_rope_factors(json.loads((folder / "config.json").read_text()))
    assert len(set(factors.tolist())) > 2  # unscaled, smoothed and divided frequencies
    path = write_gguf(folder, tmp_path / "llama3.gguf", "F32", extra={"rope_freqs.weight": factors})
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    prompt = PROMPT * 6  # 60 positions
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp)
    out = model.generate([prompt], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("rope_keys", ["type", "factor", "old"])
def test_linear_rope_scaling_gives_the_checkpoints_logits(tiny_model, tmp_path, rope_keys):
    """However the file spells it: llama.cpp takes a file without `rope.scaling.type` as linear,
    and older converters wrote the factor as `rope.scale_linear` (ignored before: other logits)."""
    import json

    folder = tiny_model("llama_linear_rope")
    factor = json.loads((folder / "config.json").read_text())["rope_parameters"]["factor"]
    path = write_gguf(folder, tmp_path / "linear.gguf", "F32", linear_rope=factor, rope_keys=rope_keys)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT * 3])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=3), tp=3)
    out = model.generate([PROMPT * 3], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("tp", [1, 3])
def test_yarn_rope_scaling_gives_the_checkpoints_logits(tiny_model, tmp_path, tp):
    """A config's YaRN as llama.cpp's converter stores it (type, factor, original context);
    transformers ignores those fields when it loads a GGUF, so the reference is transformers on
    the checkpoint the file was made from, past the original context (llama.cpp itself: below)."""
    import json

    folder = tiny_model("llama_yarn")
    rope = json.loads((folder / "config.json").read_text())["rope_parameters"]
    yarn = (rope["factor"], rope["original_max_position_embeddings"], None)
    path = write_gguf(folder, tmp_path / "yarn.gguf", "F32", yarn=yarn)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    prompt = PROMPT * 10  # 100 positions, past the original 64
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp)
    assert model.graph.meta["extended_positions"] == 256  # 4 x 64
    out = model.generate([prompt], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_a_rope_scaling_of_type_none_ignores_its_factor_and_frequency_factors_take_a_linear_one(tiny_model, tmp_path):
    """As llama.cpp: type "none" never scales; a linear factor and `rope_freqs.weight` divide
    the frequencies both (the factors' file times the factor is the same file)."""
    folder = tiny_model("llama_gguf")

    def logits(name, **kw):
        model = tilesim.load(str(write_gguf(folder, tmp_path / name, "F32", **kw)), device="tiny", tp=1)
        return model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all").logits[0]

    np.testing.assert_array_equal(logits("none.gguf", linear_rope=4.0, rope_keys="none"), logits("plain.gguf"))
    factors = np.linspace(1, 8, 8, dtype=np.float32)
    both = logits("both.gguf", linear_rope=2.0, extra={"rope_freqs.weight": factors})
    np.testing.assert_array_equal(both, logits("folded.gguf", extra={"rope_freqs.weight": factors * 2}))
    assert not np.array_equal(both, logits("factors.gguf", extra={"rope_freqs.weight": factors}))


@pytest.mark.parametrize(
    ("factors", "phrase"),
    [(np.ones(3, np.float32), "holds 3 factors; the rotary dimension 16 asks for 8"),
     (np.array([1, 2, 0, 4, 1, 1, 1, 1], np.float32), "not positive numbers")],
)  # fmt: skip
def test_frequency_factors_of_the_wrong_count_or_sign_are_refused(tiny_model, tmp_path, factors, phrase):
    path = write_gguf(tiny_model("llama_gguf"), tmp_path / "bad.gguf", "F32", extra={"rope_freqs.weight": factors})
    with pytest.raises(CheckpointError, match=phrase):
        tilesim.load(str(path), device="tiny", tp=1)


def test_a_gguf_with_tensors_its_metadata_does_not_use_is_refused_as_llama_cpp_refuses_it(tiny_model, tmp_path):
    extra = {"blk.2.attn_norm.weight": np.ones(96, np.float32)}
    path = write_gguf(tiny_model("llama_gguf"), tmp_path / "deeper.gguf", "F32", extra=extra)
    with pytest.raises(CheckpointError, match=r"not used \('blk\.2\.attn_norm\.weight'\).*holds 3 layers.*asks for 2"):
        tilesim.load(str(path), device="tiny", tp=1)


@pytest.mark.parametrize("tp", [1, 3])
def test_heads_wider_than_hidden_over_heads_give_the_checkpoints_logits(tiny_model, tmp_path, tp):
    """transformers does not read a llama GGUF's attention.key_length, so the reference is
    transformers on the checkpoint the file was made from (in F32: the same values)."""
    folder = tiny_model("llama_head_dim")
    path = write_gguf(folder, tmp_path / "head-dim.gguf", "F32")
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    assert hf.config.head_dim == 32
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp)
    out = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("tp", [1, 3])
def test_a_qwen2_gguf_with_biased_projections_matches_transformers_loading_the_same_file(tiny_model, tmp_path, tp):
    """Qwen2's layout: Q/K/V biases, Q/K rows as Hugging Face stores them, a tied output layer."""
    path = write_gguf(tiny_model("qwen2"), tmp_path / "qwen2.gguf", "F16", arch="qwen2")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp)
    assert model.checkpoint.config.qkv_bias and model.checkpoint.config.tie_embeddings
    out = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("tp", [1, 2])
def test_a_qwen3_gguf_with_head_norms_matches_transformers_loading_the_same_file(tiny_model, tmp_path, tp):
    """Qwen3's layout: attn_q_norm and attn_k_norm (head_dim wide, feature by feature different
    weights), no biases, Q/K rows as Hugging Face stores them."""
    path = write_gguf(tiny_model("qwen3_gguf"), tmp_path / "qwen3.gguf", "F16", arch="qwen3")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp)
    assert model.checkpoint.config.qk_norm and not model.checkpoint.config.qkv_bias
    out = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize(
    ("name", "arch", "tp", "moe"),
    [("mixtral", "llama", 1, "tp"), ("mixtral", "llama", 3, "tp"), ("mixtral", "llama", 2, "ep"),
     ("qwen3_moe_gguf", "qwen3moe", 1, "tp"), ("qwen3_moe_gguf", "qwen3moe", 3, "tp"),
     ("qwen3_moe_gguf", "qwen3moe", 4, "ep")],
)  # fmt: skip
def test_a_mixture_of_experts_gguf_gives_the_checkpoints_logits(tiny_model, tmp_path, name, arch, tp, moe):
    """Mixtral (llama arch with expert_count) and Qwen3-MoE (qwen3moe) as llama.cpp's converter
    stacks their experts (`ffn_gate_exps`: experts x rows x columns); transformers does not read
    qwen3moe's expert width from a GGUF, so the reference is transformers on the checkpoint the
    file was made from (llama.cpp itself: below)."""
    folder = tiny_model(name)
    path = write_gguf(folder, tmp_path / f"{name}.gguf", "F32", arch=arch)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp, moe=moe, pad_heads=True)
    assert model.checkpoint.config.experts == 4 and model.checkpoint.config.qk_norm == (arch == "qwen3moe")
    out = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_a_qwen3_gguf_without_a_head_norm_names_it(tiny_model, tmp_path):
    """It said that the other blocks' norms were not used (whether a file had head norms was
    read off block 0); llama.cpp asks every qwen3 block for both."""
    path = write_gguf(
        tiny_model("qwen3_gguf"), tmp_path / "q.gguf", "F32", arch="qwen3", leave_out={"blk.0.attn_q_norm.weight"}
    )
    with pytest.raises(CheckpointError, match=r"tensor 'blk\.0\.attn_q_norm\.weight' is missing"):
        tilesim.load(str(path), device="tiny", tp=1)


def test_a_truncated_gguf_is_refused(tiny_model, tmp_path):
    path = write_gguf(tiny_model("llama_gguf"), tmp_path / "whole.gguf", "F32")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 1000])
    with pytest.raises(CheckpointError, match=r"cut\.gguf: (truncated|not a readable GGUF)"):
        tilesim.load(str(cut), device="tiny", tp=1)
    for version in (1, 9):  # was "truncated or damaged"; the file is whole, of a version gguf does not read
        old = tmp_path / f"v{version}.gguf"
        whole = path.read_bytes()
        old.write_bytes(whole[:4] + version.to_bytes(4, "little") + whole[8:])
        with pytest.raises(CheckpointError, match=rf"v{version}\.gguf: GGUF version {version}; the gguf package"):
            tilesim.load(str(old), device="tiny", tp=1)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
@pytest.mark.parametrize("tp", [2, 4])
def test_padded_heads_keep_the_checkpoints_blocks_and_match_transformers(tiny_model, tmp_path, qtype, tp):
    """6 heads / 3 key-value heads of 32 dims at TP 2 and 4 run only padded: the padding is
    whole zero blocks, so q/k/v/o stay in the file's blocks (not dequantized), and the
    logits are transformers' from the same file."""
    folder = tiny_model("llama_gguf_wide")
    path = write_gguf(folder, tmp_path / f"wide-{qtype}.gguf", qtype)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].numpy()
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=tp), tp=tp, dtype="native", pad_heads=True)
    padded = [p for p in model.formats if model.sp.padded(p) and len(model.graph.params[p].shape) == 2]
    assert len(padded) >= 2 * 2  # q and o of both layers (k and v too where key/value heads are added)
    assert all(model.formats[p] == qtype.lower() for p in padded)
    out = model.generate([PROMPT], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))


class _Metadata:
    """A GGUF reader's metadata side, with the fields a test gives."""

    path, tensors = "m.gguf", {}

    def __init__(self, **fields):
        base = {"general.architecture": "llama", "llama.embedding_length": 48, "llama.attention.head_count": 6,
                "llama.block_count": 2, "llama.feed_forward_length": 88, "llama.context_length": 256,
                "llama.vocab_size": 101}  # fmt: skip
        self.fields = {**base, **fields}

    def field(self, name, default=None):
        return self.fields.get(name, default)


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"llama.attention.head_count": 0}, "llama.attention.head_count is 0; it must be a whole number >= 1"),
        ({"llama.block_count": -1}, "llama.block_count is -1; it must be a whole number >= 1"),
        ({"llama.block_count": 10**9}, "llama.block_count is 1000000000; it must be at most 1,024"),
        ({"llama.context_length": 2**40}, "llama.context_length is 1099511627776; it must be at most 16,777,216"),
        ({"llama.rope.freq_base": -5.0}, "llama.rope.freq_base is -5.0; it must be a positive number"),
        ({"llama.attention.layer_norm_rms_epsilon": float("nan")}, "layer_norm_rms_epsilon is nan"),
        ({"llama.attention.key_length": 8, "llama.attention.value_length": 16}, "value_length differs from"),
        ({"llama.vocab_size": "many"}, "llama.vocab_size is 'many'; it must be a whole number >= 1"),
        ({"llama.attention.head_count": 1000}, "head_count 1000 does not divide its embedding_length 48, and no"),
        ({"llama.attention.head_count": 5}, "head_count 5 does not divide its embedding_length 48"),
        ({"llama.rope.dimension_count": 7}, "rope.dimension_count 7: an odd number; rotary dimensions turn in pairs"),
        ({"llama.rope.dimension_count": 16}, "rope.dimension_count 16: more than the head's 8 dimensions"),
        ({"llama.attention.key_length": 7, "llama.attention.value_length": 7}, r"the head's 7, no llama.rope.*odd"),
        ({"llama.rope.scaling.type": "yarn"}, "GGUF metadata has no llama.rope.scaling.factor"),
        ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 0.5}, "factor 0.5 is below 1 \\(YaRN\\)"),
        (
            {"llama.rope.scaling.type": "longrope"},
            r"rope scaling 'longrope' is not supported \(supported: linear, yarn",
        ),
        ({"llama.rope.scaling.factor": -2.0}, "llama.rope.scaling.factor is -2.0; it must be a positive number"),
        # experts as tensors of their own (blk.0.ffn_gate.0.weight ...: converters before 2024)
        ({"llama.expert_count": 8, "llama.expert_used_count": 2}, "experts are tensors of their own"),
    ],
)
def test_gguf_metadata_out_of_range_is_named(fields, phrase):
    from tilesim.models.gguf_checkpoint import config_from_gguf

    assert config_from_gguf(_Metadata()).heads == 6
    with pytest.raises(CheckpointError, match=phrase):
        config_from_gguf(_Metadata(**fields))


def test_generation_stops_at_the_end_of_text_and_of_turn_as_llama_cpp_stops():
    from tilesim.models.gguf_checkpoint import config_from_gguf

    fields = {"tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.eot_token_id": 7, "tokenizer.ggml.eom_token_id": 2}
    assert config_from_gguf(_Metadata(**fields)).eos_token_ids == (2, 7)
    assert config_from_gguf(_Metadata()).eos_token_ids == ()
    with pytest.raises(CheckpointError, match="stop token id -1 is not a token id"):
        config_from_gguf(_Metadata(**{"tokenizer.ggml.eot_token_id": -1}))


@pytest.mark.parametrize(
    ("name", "linear", "rope_keys"),
    [("llama_gguf", None, "type"), ("llama3_rope", None, "type"), ("llama_head_dim", None, "type"),
     # a linear factor however the file spells it, none, and beside the frequency factors
     ("llama_linear_rope", 4.0, "factor"), ("llama_linear_rope", 4.0, "old"), ("llama_linear_rope", 4.0, "none"),
     ("llama3_rope", 2.0, "type"),
     # YaRN: the converter's fields, and with the attention factor llama.cpp multiplies in
     ("llama_yarn", (4.0, 64, None), "yarn"), ("llama_yarn", (4.0, 64, 0.8), "yarn"),
     # mixtures of experts, their experts stacked (llama.cpp renormalises qwen3moe's expert weights)
     ("mixtral", None, "type"), ("qwen3_moe_gguf", None, "type")],
)  # fmt: skip
def test_logits_are_llama_cpps_on_the_same_file(tiny_model, tmp_path, name, linear, rope_keys):
    """Against llama.cpp itself (its KV cache in fp32), where its Python binding is built
    (`make bench-llamacpp`; skipped otherwise, as in `make test`): the rope frequency factors,
    the linear rope scaling and the key width as llama.cpp reads them."""
    import json

    llama_cpp = pytest.importorskip("llama_cpp")
    folder = tiny_model(name)
    cfg = json.loads((folder / "config.json").read_text())
    extra = {"rope_freqs.weight": llama3_rope_factors(cfg)} if name == "llama3_rope" else None
    no_vocab = lambda writer: writer.add_tokenizer_model("no_vocab")  # noqa: E731
    rope = {"yarn": linear} if rope_keys == "yarn" else {"linear_rope": linear, "rope_keys": rope_keys}
    arch = "qwen3moe" if name == "qwen3_moe_gguf" else "llama"
    path = write_gguf(folder, tmp_path / f"{name}.gguf", "F32", extra=extra, tokenizer=no_vocab, arch=arch, **rope)
    prompt = PROMPT * (10 if rope_keys == "yarn" else 6)  # YaRN: past the original 64 positions
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, verbose=False, n_ctx=128, type_k=0, type_v=0)
    llm.eval(prompt)
    ref = np.array(llm.scores[: len(prompt)])
    model = tilesim.load(str(path), device=tilesim.Device("tiny", cores=3), tp=3)
    out = model.generate([prompt], max_new_tokens=1, eos_token_id=None, return_logits="all")
    assert np.max(np.abs(out.logits[0] - ref)) <= 1e-4 * np.max(np.abs(ref))
