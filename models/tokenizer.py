"""Text to token ids and back, with the `tokenizers` library (no transformers at run time).

A tokenizer comes from a checkpoint folder (`tokenizer.json`, plus `tokenizer_config.json`
and `chat_template.jinja` for special tokens and the chat template) or is built from a
GGUF file's metadata (a byte-level BPE from `tokenizer.ggml.tokens` and `.merges`, with
the tokens the file marks as control made special), as transformers builds it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from tilesim.errors import CheckpointError, TilesimWarning
from tilesim.models.chat import render_chat

_CONTROL = 3  # llama.cpp token type of special tokens such as <|im_start|>

# How text is split into words before BPE, by the GGUF's `tokenizer.ggml.pre`: a vocabulary's
# merges were learned on its own split, and llama.cpp splits as the name says. GPT-2's split
# is ByteLevel's own; SmolLM's puts each digit apart first (as its tokenizer.json does).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # digits one by one
_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}
_GPT2_SPLITS = (None, "default", "gpt2", "gpt-2", "smollm")


class Tokenizer:
    """Encodes text, decodes ids, renders chat prompts; wraps a `tokenizers.Tokenizer`."""

    def __init__(
        self,
        backend: Any,
        *,
        bos_token: str | None,
        eos_token: str | None,
        chat_template: str | None,
        add_bos: bool = False,
    ):
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.chat_template = chat_template
        self.add_bos = add_bos
        self.bos_id = backend.token_to_id(bos_token) if bos_token else None
        self.eos_id = backend.token_to_id(eos_token) if eos_token else None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """The prompt ids of a conversation, through the checkpoint's chat template."""
        if not self.chat_template:
            raise CheckpointError("this checkpoint has no chat template; drop --chat and give the prompt as it is")
        text = render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )
        return self.encode(text, add_special_tokens=False)


def from_folder(folder: Path) -> Tokenizer | None:
    """The tokenizer saved next to a checkpoint, or None when there is none."""
    from tokenizers import Tokenizer as Backend

    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        backend = Backend.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception type
        raise CheckpointError(f"{path}: cannot read the tokenizer ({exc})") from None
    config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    return Tokenizer(
        backend,
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
        chat_template=template,
    )


def _token_text(token: Any) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's map of bytes to printable characters (the spelling of byte-level vocabularies)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _pre_tokenizer(reader):
    from tokenizers import Regex, pre_tokenizers

    pre = reader.field("tokenizer.ggml.pre")
    prefix = bool(reader.field("tokenizer.ggml.add_space_prefix", False))
    if pre in _SPLITS:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=False),
            ]
        )
    if pre not in _GPT2_SPLITS:
        warnings.warn(
            f"{reader.path}: GGUF pre-tokenizer {pre!r} is not one tilesim knows ({', '.join(sorted(_SPLITS))}, "
            "gpt2, smollm); text is split as GPT-2 splits it, so its token ids may differ from llama.cpp's: "
            "give prompts as token ids to be sure",
            TilesimWarning,
            stacklevel=4,
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def from_gguf(reader) -> Tokenizer | None:
    """A byte-level BPE tokenizer built from GGUF metadata (`tokenizer.ggml.model == "gpt2"`)."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as Backend

    kind = reader.field("tokenizer.ggml.model")
    tokens = reader.field("tokenizer.ggml.tokens")
    if not tokens:
        return None
    if kind != "gpt2":
        raise CheckpointError(
            f"{reader.path}: GGUF tokenizer {kind!r} is not supported (only byte-level BPE, 'gpt2'); pass token ids"
        )
    alphabet = set(_byte_alphabet().values())
    spell = _byte_alphabet()
    vocab = {}
    for index, token in enumerate(tokens):
        text = token if set(token) <= alphabet else "".join(spell[b] for b in token.encode("utf-8"))
        vocab.setdefault(text, index)
    merges = [tuple(m.split(" ", 1)) for m in reader.field("tokenizer.ggml.merges") or []]
    backend = Backend(models.BPE(vocab, merges, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(reader)
    backend.decoder = decoders.ByteLevel()
    types = reader.field("tokenizer.ggml.token_type") or []
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types, strict=False)
        if ty == _CONTROL and set(t) <= alphabet
    ]
    backend.add_special_tokens(special)

    def token(key: str) -> str | None:
        index = reader.field(key)
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    return Tokenizer(
        backend,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        chat_template=reader.field("tokenizer.chat_template"),
        add_bos=bool(reader.field("tokenizer.ggml.add_bos_token", False)),
    )
