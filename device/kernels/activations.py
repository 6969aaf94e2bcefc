"""Element-wise activations and the row softmax, fp32.

Variants:
1. `gelu_tanh`: GPT-2's "gelu_new", 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
2. `gelu_exact`: 0.5 x (1 + erf(x / sqrt(2))), torch's default GELU.
3. `silu`, `relu`, and `silu_mul` (SwiGLU's silu(gate) * up, fused).
4. `softmax_rows`: max-subtracted, over the last axis.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tilesim.device.cost import KernelCost

_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@njit(cache=True)
def _gelu_tanh(x, out):  # flat (N,)
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = (
            np.float32(0.5)
            * v
            * (np.float32(1.0) + np.float32(math.tanh(_SQRT_2_OVER_PI * (v + np.float32(0.044715) * v * v * v))))
        )


@njit(cache=True)
def _gelu_exact(x, out):
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        out[i] = np.float32(0.5 * v * (1.0 + math.erf(v * _INV_SQRT2)))


@njit(cache=True)
def _silu(x, out):
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = v / (np.float32(1.0) + np.float32(math.exp(-v)))


@njit(cache=True)
def _relu(x, out):
    for i in range(x.shape[0]):
        out[i] = x[i] if x[i] > 0 else np.float32(0.0)


@njit(cache=True)
def _sigmoid(x, out):
    for i in range(x.shape[0]):
        out[i] = np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-x[i])))


@njit(cache=True)
def _relu_square(x, out):  # RWKV's channel mix: relu(x) ** 2
    for i in range(x.shape[0]):
        v = x[i] if x[i] > 0 else np.float32(0.0)
        out[i] = v * v


@njit(cache=True)
def _silu_mul(gate, up, out):
    for i in range(gate.shape[0]):
        g = gate[i]
        out[i] = g / (np.float32(1.0) + np.float32(math.exp(-g))) * up[i]


@njit(cache=True)
def _softmax_rows(x, out):  # (M, K)
    for m in range(x.shape[0]):
        mx = x[m, 0]
        for k in range(1, x.shape[1]):
            mx = max(mx, x[m, k])
        s = np.float32(0.0)
        for k in range(x.shape[1]):
            e = np.float32(math.exp(x[m, k] - mx))
            out[m, k] = e
            s += e
        for k in range(x.shape[1]):
            out[m, k] = out[m, k] / s


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def gelu_tanh(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    _gelu_tanh(_flat(x), _flat(out))
    return out


def gelu_exact(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    _gelu_exact(_flat(x), _flat(out))
    return out


def silu(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    _silu(_flat(x), _flat(out))
    return out


def relu(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    _relu(_flat(x), _flat(out))
    return out


def sigmoid(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    _sigmoid(_flat(x), _flat(out))
    return out


def relu_square(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    _relu_square(_flat(x), _flat(out))
    return out


def silu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> np.ndarray:
    """SwiGLU: silu(gate) * up, element by element."""
    _silu_mul(_flat(gate), _flat(up), _flat(out))
    return out


def softmax_rows(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of x (M, K)."""
    _softmax_rows(x, out)
    return out


ACTIVATIONS = {
    "gelu_tanh": gelu_tanh, "gelu_exact": gelu_exact, "silu": silu, "relu": relu, "sigmoid": sigmoid,
    "relu_square": relu_square,
}  # fmt: skip


def activation_cost(n: int, *, kind: str, inputs: int = 1, act_bytes: int = 4, dtype: str = "fp32") -> KernelCost:
    """A handful of FLOPs per element (transcendentals counted as 4); inputs read, out written."""
    per = {"relu": 1, "silu": 6, "gelu_tanh": 10, "gelu_exact": 10, "silu_mul": 7, "softmax": 6, "sigmoid": 6,
           "relu_square": 2, "mul": 1, "scale": 1, "mix": 3}[kind]  # fmt: skip
    return KernelCost(kind, "elementwise", per * n, dtype, {"activations": (inputs + 1) * n * act_bytes})


@njit(cache=True)
def _round_bf16_bits(bits):  # uint32 view of fp32 values, rounded to nearest even in place
    for i in range(bits.shape[0]):
        b = bits[i]
        bits[i] = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round fp32 values in place to the nearest bfloat16 (ties to even), kept in fp32."""
    _round_bf16_bits(x.reshape(-1).view(np.uint32))
    return x


def round_fp16(x: np.ndarray) -> np.ndarray:
    """Round fp32 values in place to the nearest float16, kept in fp32."""
    x[...] = x.astype(np.float16)
    return x
