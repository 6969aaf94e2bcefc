"""RWKV-4 (`RwkvForCausalLM`), as PopTransformer runs it: no attention and no KV cache, but a
recurrent state per layer held in device memory (the two token-shift rows and the WKV
numerator, denominator and running maximum; `runtime/kvcache.RecurrentState`).

    x = layer_norm(embed(ids))                       # layer 0's pre_ln
    for every layer:
        h = ln1(x); s = shift(h)                     # the previous token's h
        k, v, r = key(mix(h, s)), value(mix(h, s)), sigmoid(receptance(mix(h, s)))
        x = x + output(r * wkv(k, v))                # WKV: the recurrence, per channel
        h = ln2(x); s = shift(h)
        x = x + sigmoid(receptance(mix(h, s))) * value(relu(key(mix(h, s)))^2)
        every `rescale_every` layers: x = x / 2
    logits = head(ln_out(x))

Channel-sharded over cores: the time mix's key, value and receptance are split by output
channels, so each core runs the recurrence on its own channels and the output projection
(split by input) ends in one all-reduce; the channel mix's key is split by output and its
value by input (one all-reduce), its receptance (hidden to hidden) computed whole on every
core, so that r * value needs no second collective.

transformers rescales at inference: the output projection and the channel mix's value of
layer i are divided by 2^(i // rescale_every) and x is halved after every `rescale_every`
layers (powers of two: exact). tilesim does the same (the weights as they are read).
"""

from __future__ import annotations

from tilesim.errors import CheckpointError
from tilesim.models.config import HFConfig, ModelConfig
from tilesim.models.weights import WeightRef
from tilesim.runtime.graph import DecoderGraph, GraphBuilder

MODEL_TYPES = ("rwkv",)
__all__ = ["MODEL_TYPES", "build_graph", "config_from_hf", "weight_refs"]


def config_from_hf(c: HFConfig) -> ModelConfig:
    hidden = int(c.get("hidden_size"))
    attention = int(c.get("attention_hidden_size", default=hidden))
    if attention != hidden:
        raise CheckpointError(f"{c.where}: RWKV with attention_hidden_size != hidden_size is not supported")
    rescale = int(c.get("rescale_every", default=6) or 0)
    if rescale < 0:
        raise CheckpointError(f"{c.where}: rescale_every={rescale} must be 0 or more")
    cfg = ModelConfig(
        arch="rwkv",
        model_type="rwkv",
        vocab_size=int(c.get("vocab_size")),
        hidden=hidden,
        layers=int(c.get("num_hidden_layers")),
        heads=0,
        kv_heads=0,
        head_dim=1,
        intermediate=int(c.get("intermediate_size", default=4 * hidden)),
        max_positions=int(c.get("context_length", default=1024)),
        norm="layer",
        norm_eps=float(c.get("layer_norm_epsilon", default=1e-5)),
        activation="relu_square",
        positions="recurrent",
        tie_embeddings=bool(c.get("tie_word_embeddings", default=False)),
        bos_token_id=c.get("bos_token_id", default=None),
        eos_token_ids=c.eos_ids(),
        pad_token_id=c.get("pad_token_id", default=None),
    )
    cfg.extra["rescale_every"] = rescale
    return cfg


def _ln(g: GraphBuilder, cfg: ModelConfig, x: str, name: str, eps: float | None = None) -> str:
    return g.norm(x, f"{name}.weight", f"{name}.bias", "layer_norm", cfg.norm_eps if eps is None else eps)


def build_graph(cfg: ModelConfig) -> DecoderGraph:
    h_, f_ = cfg.hidden, cfg.intermediate
    g = GraphBuilder(
        cfg.model_type, vocab_size=cfg.vocab_size, hidden=h_, heads=0, kv_heads=0, head_dim=1, layers=cfg.layers,
        max_positions=cfg.max_positions,
    )  # fmt: skip
    rescale = cfg.extra.get("rescale_every", 0)
    x = g.embed("embed.weight")
    channels = None
    for i in range(cfg.layers):
        p = f"layers.{i}."
        with g.layer(i):
            if i == 0:
                x = _ln(g, cfg, x, "pre_ln")
            h = _ln(g, cfg, x, f"{p}ln1")
            s = g.shift(h, "att_shift", "attention")
            k = g.linear(g.mix(h, s, f"{p}att.mix_k", "attention"), f"{p}att.key.weight", None, h_, split="out",
                         op_type="attention", hint="key")  # fmt: skip
            v = g.linear(g.mix(h, s, f"{p}att.mix_v", "attention"), f"{p}att.value.weight", None, h_, split="out",
                         op_type="attention", hint="value")  # fmt: skip
            r = g.linear(g.mix(h, s, f"{p}att.mix_r", "attention"), f"{p}att.receptance.weight", None, h_,
                         split="out", op_type="attention", hint="receptance")  # fmt: skip
            channels = channels or k
            w = g.wkv(k, v, f"{p}att.time_decay", f"{p}att.time_first")
            rw = g.mul(g.act(r, "sigmoid", "attention"), w, "attention")
            x = g.add(x, g.linear(rw, f"{p}att.output.weight", None, h_, split="in", op_type="attention", hint="o"))
            h = _ln(g, cfg, x, f"{p}ln2")
            s = g.shift(h, "ffn_shift", "mlp")
            key = g.linear(g.mix(h, s, f"{p}ffn.mix_k", "mlp"), f"{p}ffn.key.weight", None, f_, split="out",
                           op_type="mlp", hint="up")  # fmt: skip
            value = g.linear(g.act(key, "relu_square"), f"{p}ffn.value.weight", None, h_, split="in", op_type="mlp",
                             hint="down")  # fmt: skip
            rec = g.linear(g.mix(h, s, f"{p}ffn.mix_r", "mlp"), f"{p}ffn.receptance.weight", None, h_, split="none",
                           op_type="mlp", hint="gate")  # fmt: skip
            x = g.add(x, g.mul(g.act(rec, "sigmoid"), value, "mlp"))
            if rescale and (i + 1) % rescale == 0:
                g.scale(x, 0.5)
    x = _ln(g, cfg, x, "final_norm", 1e-5)  # transformers' ln_out keeps LayerNorm's default eps
    logits = g.lm_head(g.select_last(x), "embed.weight" if cfg.tie_embeddings else "lm_head.weight", None)
    graph = g.build(logits, bos_token_id=cfg.bos_token_id, eos_token_ids=cfg.eos_token_ids,
                    pad_token_id=cfg.pad_token_id)  # fmt: skip
    graph.meta.update(recurrent=channels, hidden=h_)
    return graph


def weight_refs(cfg: ModelConfig, names: set[str]) -> dict[str, WeightRef]:
    refs = {
        "embed.weight": WeightRef("rwkv.embeddings.weight"),
        "pre_ln.weight": WeightRef("rwkv.blocks.0.pre_ln.weight"),
        "pre_ln.bias": WeightRef("rwkv.blocks.0.pre_ln.bias"),
        "final_norm.weight": WeightRef("rwkv.ln_out.weight"),
        "final_norm.bias": WeightRef("rwkv.ln_out.bias"),
    }
    if not cfg.tie_embeddings:
        refs["lm_head.weight"] = WeightRef("head.weight")
    rescale = cfg.extra.get("rescale_every", 0)
    for i in range(cfg.layers):
        b, p = f"rwkv.blocks.{i}.", f"layers.{i}."
        shrink = 1.0 / 2 ** (i // rescale) if rescale else 1.0
        for ln in ("ln1", "ln2"):
            refs[f"{p}{ln}.weight"] = WeightRef(f"{b}{ln}.weight")
            refs[f"{p}{ln}.bias"] = WeightRef(f"{b}{ln}.bias")
        for ours, theirs in (("att", "attention"), ("ffn", "feed_forward")):
            for mix in ("k", "v", "r") if ours == "att" else ("k", "r"):
                name = {"k": "key", "v": "value", "r": "receptance"}[mix]
                refs[f"{p}{ours}.mix_{mix}"] = WeightRef(f"{b}{theirs}.time_mix_{name}", flat=True)
            for proj in ("key", "value", "receptance"):
                scale = shrink if (ours, proj) == ("ffn", "value") else 1.0
                refs[f"{p}{ours}.{proj}.weight"] = WeightRef(f"{b}{theirs}.{proj}.weight", scale=scale)
        refs[f"{p}att.output.weight"] = WeightRef(f"{b}attention.output.weight", scale=shrink)
        refs[f"{p}att.time_decay"] = WeightRef(f"{b}attention.time_decay")
        refs[f"{p}att.time_first"] = WeightRef(f"{b}attention.time_first")
    return refs
