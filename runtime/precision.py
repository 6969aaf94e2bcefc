"""Which precision each tensor of a run gets: weights by class, activations, the KV cache.

`--dtype` names the weights' precision:
- `fp32`, `fp16`, `bf16`: every weight matrix in that type; activations too (16-bit
  activations are computed in fp32 and rounded to 16 bits after every op);
- `fp8` (= `fp8_e4m3`), `fp8_e5m2`, `int8`, `int4`: weight-only quantization of the
  attention and MLP projections at load, per shard (fp8 and int8 with one scale per output
  channel, int4 in groups of 32 with a scale and an offset); embeddings, norms and biases
  stay in the activation precision;
- `native` (the default for GGUF files): every tensor as the file stores it (Q4_0, Q4_1,
  Q8_0, F16, F32) and read by the kernels as stored; other GGUF types are dequantized to
  fp32 at load, and held and timed as fp32 (the report's notes say so).
Norm weights, biases and learned positions are always fp32. `--act-dtype` and `--kv-dtype`
override the activation and KV-cache precisions. `--act-dtype int8` quantizes the inputs of
block-quantized products (Q4_0, Q4_1, Q8_0, int4) to int8 blocks of 32 and computes them as
integer dot products, as llama.cpp does (device/kernels/q8_act.py); it needs such weights
(`--dtype native` on a GGUF file, or `int4`), and everything else stays fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from tilesim.device.kernels.q8_act import FORMATS as INT8_PRODUCT_FORMATS  # weights int8 activations meet
from tilesim.errors import ConfigError

WEIGHT_DTYPES = ("fp32", "fp16", "bf16", "fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4", "native")
ACT_DTYPES = ("fp32", "fp16", "bf16", "int8")
KV_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")
WEIGHT_ONLY = ("fp8_e4m3", "fp8_e5m2", "int8", "int4")
_GGUF_NATIVE = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q8_0": "q8_0", "F16": "fp16", "F32": "fp32"}
_KV_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0}


def _held(activations: str) -> str:
    """The dtype activations are kept in: int8 activations exist only as the block products'
    inputs, and are fp32 everywhere else."""
    return "fp32" if activations == "int8" else activations


def weight_class(param: str) -> str:
    """The class a canonical weight belongs to, for reports: attention, mlp, embedding, ..."""
    parts = param.split(".")
    if param.endswith(".bias") or "norm" in param or any(p.startswith("ln") or p.endswith("_ln") for p in parts):
        return "norms and biases"
    if param.startswith(("embed.", "pos.")):
        return "embedding"
    if param.startswith("lm_head."):
        return "lm_head"
    part = parts[2] if len(parts) > 2 else parts[0]
    return "attention" if part in ("q", "k", "v", "o", "att") else "mlp"  # att: RWKV's time mix


def check_weight_dtype(dtype: str) -> None:
    """Refuse a weight dtype that does not exist (a command asks before its model loads)."""
    if dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; use one of {', '.join(WEIGHT_DTYPES)}")


@dataclass(frozen=True)
class Precision:
    weights: str  # one of WEIGHT_DTYPES, with fp8 spelled fp8_e4m3
    activations: str
    kv: str

    @classmethod
    def make(
        cls, dtype: str, act_dtype: str | None = None, kv_dtype: str | None = None, gguf: bool = False
    ) -> Precision:
        check_weight_dtype(dtype)
        if dtype == "native" and not gguf:
            raise ConfigError("dtype='native' runs a GGUF file's tensors as stored; this checkpoint is not GGUF")
        weights = "fp8_e4m3" if dtype == "fp8" else dtype
        act = act_dtype if act_dtype is not None else (weights if weights in ("fp16", "bf16") else "fp32")
        if act not in ACT_DTYPES:
            raise ConfigError(f"act_dtype={act!r} is not supported; use one of {', '.join(ACT_DTYPES)}")
        if act == "int8" and weights not in ("native", "int4"):
            raise ConfigError(
                "act_dtype='int8' multiplies int8 activations with block-quantized weights; "
                f"use it with dtype='int4' or a GGUF file's native blocks, not dtype={dtype!r}"
            )
        kv = kv_dtype if kv_dtype is not None else _held(act)
        if kv not in KV_DTYPES:
            raise ConfigError(f"kv_dtype={kv!r} is not supported; use one of {', '.join(KV_DTYPES)}")
        return cls(weights, act, kv)

    @property
    def kv_bytes(self) -> float:
        return _KV_BYTES[self.kv]

    @property
    def held(self) -> str:
        return _held(self.activations)

    @property
    def act_bytes(self) -> int:
        return 2 if self.held in ("fp16", "bf16") else 4

    @property
    def compute_dtype(self) -> str:
        """The dtype whose peak the kernels run at: the activations' as held (weights are
        decoded to it); int8 products run at int8's (`product_dtype`)."""
        return self.held

    def product_dtype(self, fmt: str) -> str:
        """The dtype whose peak a matrix product with weights stored as `fmt` runs at."""
        return "int8" if self.activations == "int8" and fmt in INT8_PRODUCT_FORMATS else self.compute_dtype

    def format_for(self, param: str, ndim: int, stored: str | None = None) -> str:
        """The storage format of `param`; `stored` is a GGUF tensor type for native runs."""
        if ndim == 1 or param.startswith("pos."):
            return "fp32"
        if self.weights == "native":
            return _GGUF_NATIVE.get(stored or "F32", "fp32")
        if self.weights in WEIGHT_ONLY and weight_class(param) in ("embedding", "lm_head"):
            return self.held
        return self.weights
