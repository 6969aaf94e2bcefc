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
import math
import struct
from pathlib import Path

import numpy as np

from tilesim.errors import CheckpointError, first_line


class SafetensorsReader:
    """The tensors of a safetensors checkpoint folder."""

    def __init__(self, folder: Path):
        import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' BF16)
        from safetensors import safe_open

        self.path = str(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())
            except (ValueError, RecursionError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
            weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
            if not isinstance(weight_map, dict) or not all(_shard_name(f) for f in weight_map.values()):
                raise CheckpointError(
                    f"{index}: not a safetensors index: its 'weight_map' must map tensor names to files in the folder"
                )
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
        self._open = {}
        for path in sorted(set(self._file_of.values())):
            try:
                self._open[path] = safe_open(path, framework="numpy")
            except Exception as exc:  # safetensors' own SafetensorError: what our check above does not see
                raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None

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
        except (ValueError, RecursionError):
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape, (start, end) = tuple(info["shape"]), info["data_offsets"]
            width = _DTYPE_BYTES.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: tensor {name!r} lacks a dtype, shape or data_offsets in the header"
            ) from None
        whole = all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in (*shape, start, end))
        if not whole or end < start:
            raise CheckpointError(f"{path}: tensor {name!r}: shape {list(shape)} or data_offsets {[start, end]} is bad")
        if 8 + length + end > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {8 + length + end} but the file has {size} bytes"
            )
        nbytes = None if width is None else math.prod(shape) * width
        if nbytes is not None and nbytes != end - start:
            raise CheckpointError(
                f"{path}: tensor {name!r}: shape {list(shape)} of {info['dtype']} is {nbytes} bytes, "
                f"but its data_offsets span {end - start}"
            )
        shapes[name] = shape
    return shapes


# bytes per element of safetensors' dtypes (the others are left to the library's own check)
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


CACHE_FROM_BYTES = 8 * 2**20


class _Tensor:
    """A GGUF tensor as the reader needs it: its type, its data (memory-mapped) and its size."""

    def __init__(self, name: str, qtype: str, data: np.ndarray, offset: int, nbytes: int):
        from gguf import GGMLQuantizationType

        self.name = name
        self.tensor_type = GGMLQuantizationType[qtype]
        self.data = data
        self.data_offset = offset
        self.n_bytes = nbytes


class GGUFTensorReader:
    """The tensors of a GGUF file, rows dequantized to float32 on demand.

    The `gguf` package parses the file; its metadata (the vocabulary alone is ~100,000
    strings, seconds to parse) and tensor table are cached per file, keyed by its path, size
    and modification time, so a second process memory-maps the tensors at once.
    """

    def __init__(self, path: Path):
        self.path = str(path)
        size = path.stat().st_size
        worth_caching = size > CACHE_FROM_BYTES  # small files parse in a blink
        cached = _read_cache(path) if worth_caching else None
        if cached is None:
            cached = _parse(path)
            if worth_caching:
                _write_cache(path, cached)
        self._fields = cached["fields"]
        self.tensors = {}
        for name, info in cached["tensors"].items():
            if info["offset"] + info["nbytes"] > size:
                raise CheckpointError(f"{path}: truncated: tensor {name!r} runs past the end of the file")
            data = np.memmap(
                path, dtype=np.dtype(info["dtype"]), mode="r", offset=info["offset"], shape=tuple(info["shape"])
            )
            if data.ndim == 3:  # a mixture's experts stacked (ffn_gate_exps...): one matrix each, `name[e]`
                each = info["nbytes"] // data.shape[0]
                for e in range(data.shape[0]):
                    part = f"{name}[{e}]"
                    self.tensors[part] = _Tensor(part, info["qtype"], data[e], info["offset"] + e * each, each)
                continue
            self.tensors[name] = _Tensor(name, info["qtype"], data, info["offset"], info["nbytes"])

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        """(rows, columns) in elements, whatever the storage type."""
        from gguf.quants import quant_shape_from_byte_shape

        t = self.tensors[name]
        if t.data.dtype == np.uint8:
            return tuple(int(d) for d in quant_shape_from_byte_shape(t.data.shape, t.tensor_type))
        return tuple(int(d) for d in t.data.shape)

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
        return self._fields.get(key, default)


def _parse(path: Path) -> dict:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the gguf package raises ValueError, struct.error, IndexError...
        with open(path, "rb") as f:
            magic, version = f.read(4), f.read(4)
        if magic != b"GGUF":
            raise CheckpointError(f"{path}: not a GGUF file (it does not start with the GGUF magic)") from None
        if len(version) == 4:  # not damage but a format the gguf package does not read
            from gguf.gguf_reader import READER_SUPPORTED_VERSIONS as known

            number = int.from_bytes(version, "little")
            number = number if number & 0xFFFF else int.from_bytes(version, "big")  # a big-endian file
            if number not in known:
                raise CheckpointError(
                    f"{path}: GGUF version {number}; the gguf package here reads versions "
                    f"{', '.join(map(str, known))}: convert the model again with a current llama.cpp"
                ) from None
        raise CheckpointError(
            f"{path}: truncated or damaged: a GGUF header whose tables run past what the file holds "
            f"({type(exc).__name__}: {exc}); download or convert it again"
        ) from None
    fields = {}
    for key, field in reader.fields.items():
        try:
            value = field.contents()
        except Exception:  # a field this gguf version cannot decode is simply not offered
            continue
        if isinstance(value, np.generic):
            value = value.item()
        fields[key] = value
    tensors = {
        t.name: {"qtype": t.tensor_type.name, "dtype": t.data.dtype.str, "shape": list(t.data.shape),
                 "offset": int(t.data_offset), "nbytes": int(t.n_bytes)}
        for t in reader.tensors
    }  # fmt: skip
    return {"fields": fields, "tensors": tensors}


def _cache_file(path: Path) -> Path:
    import hashlib
    import os

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|1".encode()).hexdigest()[:24]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tilesim" / "gguf"
    return root / f"{key}.json"


def _read_cache(path: Path) -> dict | None:
    try:
        return json.loads(_cache_file(path).read_text())
    except (OSError, ValueError):
        return None


def _write_cache(path: Path, parsed: dict) -> None:
    try:
        target = _cache_file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(parsed, default=_plain))
        temporary.replace(target)
    except (OSError, TypeError, ValueError):
        pass  # no cache: the next process parses the file again


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(type(value))


def _shard_name(name) -> bool:
    """A shard of a sharded checkpoint is a file in its folder: not a path that leaves it."""
    if not isinstance(name, str) or not name.strip():
        return False
    path = Path(name)
    return not path.is_absolute() and ".." not in path.parts
