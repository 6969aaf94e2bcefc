"""Tensor readers for the two checkpoint formats tilesim loads, both unable to run code.

- `SafetensorsReader`: a Hugging Face folder, one `model.safetensors` or shards listed in
  `model.safetensors.index.json`; reads slices through safetensors' numpy API (memory
  mapped, so only the bytes asked for are read).
- `GGUFTensorReader`: a GGUF file through the `gguf` package; quantized tensors (Q4_0, Q4_1,
  Q8_0, ...) are dequantized row by row with `gguf.quants.dequantize`.
Both check, before anything is read, that the file is whole.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' BF16)
import numpy as np

from tilesim.errors import CheckpointError


class SafetensorsReader:
    """The tensors of a safetensors checkpoint folder."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.path = str(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
            files = sorted(set(weight_map.values()))
        elif (folder / "model.safetensors").is_file():
            weight_map, files = None, ["model.safetensors"]
        else:
            raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._file_of: dict[str, str] = {}
        for name in files:
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"{path}: missing (listed in {index.name})")
            for tensor, shape in check_safetensors_file(path).items():
                self._shapes[tensor] = shape
                self._file_of[tensor] = str(path)
        if weight_map:
            for tensor, name in weight_map.items():
                if tensor not in self._shapes:
                    raise CheckpointError(f"{folder / name}: tensor {tensor!r} listed in the index is not in the file")
        self._open = {path: safe_open(path, framework="numpy") for path in sorted(set(self._file_of.values()))}

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def file_of(self, name: str) -> str:
        return self._file_of.get(name, self.path)

    def read(self, name: str, rows: slice, cols: slice | None) -> np.ndarray:
        part = self._open[self._file_of[name]].get_slice(name)
        data = part[rows] if cols is None else part[rows, cols]
        return np.asarray(data).astype(np.float32, copy=False)


def check_safetensors_file(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file, after checking its header and its length."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated (shorter than a safetensors header)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise CheckpointError(f"{path}: truncated (header of {length} bytes, file of {size})")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from None
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = info["data_offsets"][1]
        if 8 + length + end > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {8 + length + end} but the file has {size} bytes"
            )
        shapes[name] = tuple(info["shape"])
    return shapes


class GGUFTensorReader:
    """The tensors of a GGUF file, rows dequantized to float32 on demand."""

    def __init__(self, path: Path):
        import gguf

        self.path = str(path)
        try:
            self.gguf = gguf.GGUFReader(str(path))
        except Exception as exc:  # the gguf package raises ValueError, struct.error, IndexError...
            raise CheckpointError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
        self.tensors = {t.name: t for t in self.gguf.tensors}
        size = path.stat().st_size
        for t in self.gguf.tensors:
            if t.data_offset + t.n_bytes > size:
                raise CheckpointError(f"{path}: truncated: tensor {t.name!r} runs past the end of the file")

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self.tensors[name].shape))  # GGUF lists dims innermost first

    def file_of(self, name: str) -> str:
        return self.path

    def qtype(self, name: str) -> str:
        return self.tensors[name].tensor_type.name

    def raw_rows(self, name: str, rows: slice) -> np.ndarray:
        """The stored bytes (or values) of whole rows, without dequantizing."""
        return self.tensors[name].data[rows]

    def read(self, name: str, rows: slice, cols: slice | None) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self.tensors[name]
        data = t.data[rows]
        if t.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            data = dequantize(np.ascontiguousarray(data), t.tensor_type)
        data = np.asarray(data, dtype=np.float32)
        return data if cols is None else data[:, cols]

    def field(self, key: str, default=None):
        f = self.gguf.fields.get(key)
        if f is None:
            return default
        return f.contents()
