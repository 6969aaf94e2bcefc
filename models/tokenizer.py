"""Text to token ids and back, with the `tokenizers` library (no transformers at run time).

A tokenizer comes from a checkpoint folder (`tokenizer.json`, plus `tokenizer_config.json`
and `chat_template.jinja` for special tokens and the chat template) or is built from a
GGUF file's metadata (models/gguf_tokenizer.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tilesim.errors import CheckpointError
from tilesim.models.chat import render_chat


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
    where = folder / "tokenizer_config.json"
    config = _tokenizer_config(where)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = [t for t in template if isinstance(t, dict) and t.get("name") == "default"]
        template = named[0].get("template") if named else None
    if template is not None and not isinstance(template, str):
        raise CheckpointError(
            f"{where}: 'chat_template' must be text or a list of named templates, not {template!r:.40}"
        )
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            template = jinja.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{jinja}: cannot read the chat template ({exc})") from None
    return Tokenizer(
        backend,
        bos_token=_token_text(config.get("bos_token"), "bos_token", where),
        eos_token=_token_text(config.get("eos_token"), "eos_token", where),
        chat_template=template,
    )


def _tokenizer_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: cannot read the tokenizer's config ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the tokenizer's config must be a JSON object of fields")
    return config


def _token_text(token: Any, name: str, where: Path) -> str | None:
    if isinstance(token, dict):
        token = token.get("content")
    if token is not None and not isinstance(token, str):
        raise CheckpointError(f"{where}: {name!r} is {token!r:.40}; it must be the token's text")
    return token
