"""The tokenizer a GGUF file describes in its metadata, built with the `tokenizers` library as
llama.cpp tokenizes (and as transformers builds it from the same file).

Two kinds (`tokenizer.ggml.model`): `gpt2`, a byte-level BPE from `tokens` and `merges` whose
text is first split into words as `tokenizer.ggml.pre` says; and `llama`, SentencePiece's BPE
(Llama 2, Mistral, TinyLlama files) from `tokens` and `scores`: a merge's rank is its merged
piece's score, characters outside the vocabulary fall back to `<0xNN>` byte tokens, and a
space is `▁`. Tokens marked control become special tokens; user-defined ones (`<think>`) stay
whole in text.
"""

from __future__ import annotations

import math
import warnings

from tilesim.errors import CheckpointError, TilesimWarning, first_line
from tilesim.models.tokenizer import Tokenizer

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types of <|im_start|> and of <think>

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
_SPACE = "\u2581"  # SentencePiece's spelling of a space


def from_gguf(reader) -> Tokenizer | None:
    """The file's tokenizer, or None when it holds no vocabulary."""
    kind = reader.field("tokenizer.ggml.model")
    tokens = reader.field("tokenizer.ggml.tokens")
    if not tokens:
        return None
    if kind not in ("gpt2", "llama"):
        raise CheckpointError(
            f"{reader.path}: GGUF tokenizer {kind!r} is not supported (byte-level BPE 'gpt2' and SentencePiece "
            "'llama' are); pass token ids"
        )
    backend, spelled = _byte_level(reader, tokens) if kind == "gpt2" else (_sentencepiece(reader, tokens), None)
    add_bos = _switch(reader, "tokenizer.ggml.add_bos_token", kind == "llama")  # llama.cpp's defaults
    _add_marked_tokens(backend, reader, tokens, spelled)

    def token(key: str) -> str | None:
        index = reader.field(key)
        if index is None:
            return None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(tokens):
            raise CheckpointError(f"{reader.path}: GGUF {key} {index!r} is not one of its {len(tokens)} token ids")
        return tokens[index]

    template = reader.field("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{reader.path}: GGUF tokenizer.chat_template is {template!r:.40}; it must be text")
    return Tokenizer(
        backend,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        chat_template=template,
        add_bos=add_bos,
    )


def _byte_level(reader, tokens: list[str]):
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders

    alphabet = _byte_alphabet()
    letters = set(alphabet.values())
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        text = token if set(token) <= letters else "".join(alphabet[b] for b in token.encode("utf-8"))
        vocab.setdefault(text, index)
    merges = _stored_merges(reader)
    backend = Backend(_bpe(reader, vocab, merges, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(reader)
    backend.decoder = decoders.ByteLevel()
    return backend, letters


def _switch(reader, key: str, default: bool) -> bool:
    """A GGUF bool field: another type is a damaged file (bool("no") would be true)."""
    value = reader.field(key, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"{reader.path}: GGUF {key} is {value!r:.40}; it must be true or false")
    return value


def _pre_tokenizer(reader):
    from tokenizers import Regex, pre_tokenizers

    pre = reader.field("tokenizer.ggml.pre")
    prefix = _switch(reader, "tokenizer.ggml.add_space_prefix", False)
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
            stacklevel=5,
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _sentencepiece(reader, tokens: list[str]):
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, pre_tokenizers

    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    merges = _stored_merges(reader)
    if not merges:
        scores = reader.field("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens) or not all(math.isfinite(x) for x in scores):
            raise CheckpointError(
                f"{reader.path}: a SentencePiece GGUF vocabulary needs tokenizer.ggml.scores, a number per token"
            )
        merges = _merges_by_score(tokens, vocab, scores)
    backend = Backend(_bpe(reader, vocab, merges, fuse_unk=True, byte_fallback=True))
    prefix = _switch(reader, "tokenizer.ggml.add_space_prefix", True)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_SPACE, prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:  # the space put before the text is not part of it
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _bpe(reader, vocab: dict[str, int], merges: list[tuple[str, str]], **options):
    from tokenizers import models

    try:
        return models.BPE(vocab, merges, **options)
    except Exception as exc:  # tokenizers raises a bare Exception on a merge of tokens it does not have
        raise CheckpointError(
            f"{reader.path}: cannot build a tokenizer from the GGUF vocabulary ({first_line(exc)})"
        ) from None


def _stored_merges(reader) -> list[tuple[str, str]]:
    merges = []
    for number, merge in enumerate(reader.field("tokenizer.ggml.merges") or [], 1):
        pair = tuple(merge.split(" ")) if isinstance(merge, str) else ()
        if len(pair) != 2:
            raise CheckpointError(
                f"{reader.path}: GGUF merge {number} is {merge!r}; a merge is two tokens with a space between them"
            )
        merges.append(pair)
    return merges


def _merges_by_score(tokens: list[str], vocab: dict[str, int], scores) -> list[tuple[str, str]]:
    """SentencePiece's merge order from its scores: every way a piece splits into two pieces of
    the vocabulary is a merge, ranked by the piece's score (highest first); among equal scores
    the longer left part, then the longer right part, then the piece's place in the file."""
    ranked = []
    for order, piece in enumerate(tokens):
        if vocab[piece] != order:  # a repeated spelling: its first place counts
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                key = (-float(scores[order]), -len(left), -len(right), order, vocab[left], vocab[right])
                ranked.append((key, left, right))
    ranked.sort(key=lambda item: item[0])
    return [(left, right) for _, left, right in ranked]


def _add_marked_tokens(backend, reader, tokens: list[str], spelled: set[str] | None) -> None:
    """Control tokens as special tokens; user-defined ones as added tokens, matched whole in text.
    In a byte-level vocabulary a control token spelled outside the byte alphabet is a
    mislabel of the converter: adding it would grow the vocabulary past the model's."""
    from tokenizers import AddedToken

    types = reader.field("tokenizer.ggml.token_type") or []
    if len(types) != len(tokens) and types:  # llama.cpp refuses the file; which token each type is of is lost
        raise CheckpointError(
            f"{reader.path}: GGUF tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    marked = list(zip(tokens, types, strict=False))
    backend.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in marked
            if kind == _CONTROL and (spelled is None or set(t) <= spelled)
        ]
    )
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, kind in marked if kind == _USER_DEFINED])


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
