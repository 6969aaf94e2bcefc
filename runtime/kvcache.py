"""The KV cache of one layer on one core: fixed buffers in device memory, in the run's format.

Keys and values are (batch, kv heads, max_context, head_dim). In fp32 they are kept as they
are; in fp16, bf16, fp8 and int8 as codes decoded when attention reads them (int8 with one
scale per position and head, kept beside the codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesim.device.kernels import attention as kernels


def kv_arrays(fmt: str, batch: int, heads: int, context: int, head_dim: int) -> dict[str, tuple[tuple, np.dtype]]:
    """The arrays one layer's cache is made of: name -> (shape, dtype)."""
    shape = (batch, heads, context, head_dim)
    out = {"k": (shape, kernels.kv_code_dtype(fmt)), "v": (shape, kernels.kv_code_dtype(fmt))}
    if fmt == "int8":
        out["k_scale"] = ((batch, heads, context), np.dtype(np.float32))
        out["v_scale"] = ((batch, heads, context), np.dtype(np.float32))
    return out


_NO_SCALE = np.ones((1, 1, 1), np.float32)


@dataclass
class KVCache:
    fmt: str
    k: np.ndarray
    v: np.ndarray
    k_scale: np.ndarray | None = None
    v_scale: np.ndarray | None = None

    @property
    def slots(self) -> int:
        """The sequences the cache holds (the session's batch)."""
        return self.k.shape[0]

    def of_slots(self, first: int, count: int) -> KVCache:
        """The cache of slots first .. first + count - 1 (views of the same memory)."""
        if first < 0 or first + count > self.slots:
            raise ValueError(f"slots {first}..{first + count - 1} are outside the cache's {self.slots}")
        part = slice(first, first + count)

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[part]

        return KVCache(self.fmt, self.k[part], self.v[part], cut(self.k_scale), cut(self.v_scale))

    def write(self, k: np.ndarray, v: np.ndarray, start: np.ndarray, valid: np.ndarray) -> None:
        """Store new keys and values (B, T, Hkv, D) at positions start[b] + t."""
        if self.fmt == "fp32":
            kernels.kv_write(k, v, self.k, self.v, start, valid)
            return
        k_codes, k_scales = kernels.encode_kv(k, self.fmt)
        v_codes, v_scales = kernels.encode_kv(v, self.fmt)
        kernels.kv_write(k_codes, v_codes, self.k, self.v, start, valid)
        if k_scales is not None:
            kernels._scale_write(k_scales, v_scales, self.k_scale, self.v_scale, start, valid)

    def attend(
        self,
        q: np.ndarray,
        start: np.ndarray,
        valid: np.ndarray,
        scale: float,
        out: np.ndarray,
        window: int,
        slopes: np.ndarray | None = None,
    ) -> None:
        if self.fmt == "fp32":
            kernels.attention(q, self.k, self.v, start, valid, scale, out, window, slopes)
            return
        has_scale = self.k_scale is not None
        ks = self.k_scale if has_scale else _NO_SCALE
        vs = self.v_scale if has_scale else _NO_SCALE
        kernels.attention_codes(
            q,
            self.k,
            self.v,
            kernels.kv_lut(self.fmt),
            ks,
            vs,
            has_scale,
            start,
            valid,
            np.float32(scale),
            int(window),
            out,
            slopes,
        )


def state_arrays(batch: int, hidden: int, channels: int) -> dict[str, tuple[tuple, np.dtype]]:
    """The arrays of one RWKV layer's recurrent state on a core (fp32, as transformers keeps
    it): the two token-shift rows (time mix, channel mix) and the core's WKV channels."""
    f32 = np.dtype(np.float32)
    return {
        "att_shift": ((batch, hidden), f32),
        "ffn_shift": ((batch, hidden), f32),
        "num": ((batch, channels), f32),
        "den": ((batch, channels), f32),
        "max": ((batch, channels), f32),
    }


@dataclass
class RecurrentState:
    """One layer's recurrent state on one core (RWKV): what a KV cache is to attention."""

    att_shift: np.ndarray
    ffn_shift: np.ndarray
    num: np.ndarray
    den: np.ndarray
    max: np.ndarray

    @property
    def slots(self) -> int:
        return self.att_shift.shape[0]

    def of_slots(self, first: int, count: int) -> RecurrentState:
        if first < 0 or first + count > self.slots:
            raise ValueError(f"slots {first}..{first + count - 1} are outside the state's {self.slots}")
        part = slice(first, first + count)
        return RecurrentState(*(a[part] for a in (self.att_shift, self.ffn_shift, self.num, self.den, self.max)))
