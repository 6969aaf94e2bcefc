"""Writing a saved checkpoint as llama.cpp's converter writes a GGUF file (written out
independently of tilesim's reader), for the GGUF tests."""

import re

import numpy as np
from safetensors.numpy import load_file

try:
    import gguf
except ImportError:  # the tests that use it skip
    gguf = None


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q_proj/k_proj rows (written out independently)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(
    folder, path, qtype, extra=None, linear_rope=None, arch="llama", tokenizer=None, rope_keys="type", leave_out=(),
    yarn=None,
):  # fmt: skip
    """llama.cpp's layout: its tensor names, and (for `llama` only) Q/K rows permuted;
    `tokenizer(writer)` adds a vocabulary's fields. A `linear_rope` factor is written as
    `rope_keys` says: "type" (the type and the factor, as converters write it now), "factor"
    (no type), "old" (the older `rope.scale_linear`, no type) or "none" (type none, and a factor).
    Tensors named in `leave_out` are not written. `yarn`: (factor, original context, attention
    factor or None), as llama.cpp's converter writes a config's YaRN scaling (and the attention
    factor key llama.cpp reads). A mixture's experts (Mixtral's, Qwen3-MoE's) are stacked per
    layer and matrix (`ffn_gate_exps`...), its router is `ffn_gate_inp`."""
    import json

    cfg = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_vocab_size(cfg["vocab_size"])
    tensors, experts = _stacked_experts(tensors)
    if experts:
        writer.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
        writer.add_expert_used_count(cfg["num_experts_per_tok"])
        if "moe_intermediate_size" in cfg:
            writer.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if tokenizer is not None:
        tokenizer(writer)
    if (cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]) != (
        cfg["hidden_size"] // cfg["num_attention_heads"]
    ):
        writer.add_key_length(cfg["head_dim"])
        writer.add_value_length(cfg["head_dim"])
    if linear_rope:
        if rope_keys in ("type", "none"):
            writer.add_rope_scaling_type(gguf.RopeScalingType(rope_keys.replace("type", "linear")))
        if rope_keys == "old":
            writer.add_float32(f"{arch}.rope.scale_linear", linear_rope)  # llama.cpp still reads it
        else:
            writer.add_rope_scaling_factor(linear_rope)
    if yarn:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(yarn[0])
        writer.add_rope_scaling_orig_ctx_len(yarn[1])
        if yarn[2] is not None:
            writer.add_float32(f"{arch}.rope.scaling.attn_factor", yarn[2])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "Q8_0" else gguf.LlamaFileType.ALL_F32)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    rng = np.random.default_rng(0)
    for name, w in tensors.items():
        target = names.get(name)
        if target is None:
            i = name.split(".")[2]
            part = ".".join(name.split(".")[3:-1])
            target = f"blk.{i}.{parts[part]}.{name.rsplit('.', 1)[1]}"
        if target in leave_out:
            continue
        if arch == "llama" and part_is(name, "q_proj"):
            w = llama_cpp_permute(w, cfg["num_attention_heads"])
        elif arch == "llama" and part_is(name, "k_proj"):
            w = llama_cpp_permute(w, cfg["num_key_value_heads"])
        w = np.ascontiguousarray(w, dtype=np.float32)
        if qtype == "F16" and w.ndim == 2:
            writer.add_tensor(target, w.astype(np.float16))
        elif qtype in K_SCALES and w.ndim == 2:
            q = getattr(gguf.GGMLQuantizationType, qtype)
            writer.add_tensor(target, random_k_blocks(w.shape, qtype, rng), raw_dtype=q)
        elif qtype not in ("F32", "F16") and w.ndim == 2:
            q = getattr(gguf.GGMLQuantizationType, qtype)
            writer.add_tensor(target, gguf.quants.quantize(w, q), raw_dtype=q)
        else:
            writer.add_tensor(target, w)
    for name, w in experts.items():  # (experts, rows, cols), each expert's matrix as Hugging Face's
        if qtype not in ("F32", "F16"):
            q = getattr(gguf.GGMLQuantizationType, qtype)
            writer.add_tensor(name, gguf.quants.quantize(w, q), raw_dtype=q)
        else:
            writer.add_tensor(name, w.astype(np.float16) if qtype == "F16" else w)
    for name, w in (extra or {}).items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# the gguf package dequantizes K-quants but cannot quantize to them: such tensors are random
# blocks, with each block's float16 scales (byte offsets, value) set so that weights stay small
K_SCALES = {"Q4_K": ((0, 0.02), (2, 0.01)), "Q6_K": ((208, 0.0005),)}


def random_k_blocks(shape: tuple[int, int], qtype: str, rng) -> np.ndarray:
    """Random bytes in `qtype`'s block layout for a (rows, cols) weight."""
    block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)]
    rows, cols = shape
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for offset, value in K_SCALES[qtype]:
        data[:, :, offset : offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    return data.reshape(rows, -1)


_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight")
_ROUTER = re.compile(r"model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.gate\.weight")
_MATRIX = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def _stacked_experts(tensors: dict) -> tuple[dict, dict]:
    """(the other tensors, llama.cpp's stacks of the experts' matrices and the routers)."""
    rest, parts = {}, {}
    for name, w in tensors.items():
        if m := _EXPERT.fullmatch(name):
            parts.setdefault(f"blk.{m[1]}.ffn_{_MATRIX[m[3]]}_exps.weight", {})[int(m[2])] = w
        elif m := _ROUTER.fullmatch(name):
            parts[f"blk.{m[1]}.ffn_gate_inp.weight"] = {0: w}
        else:
            rest[name] = w
    stacks = {}
    for name, by_expert in parts.items():
        ws = [np.asarray(by_expert[e], np.float32) for e in sorted(by_expert)]
        stacks[name] = ws[0] if name.endswith("gate_inp.weight") else np.ascontiguousarray(np.stack(ws))
    return rest, stacks


def part_is(name: str, part: str) -> bool:
    return name.endswith(f"{part}.weight")
