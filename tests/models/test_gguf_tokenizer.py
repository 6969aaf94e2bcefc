"""A GGUF's tokenizer splits text as its `tokenizer.ggml.pre` says (Llama 3's and Qwen2's
splits differ from GPT-2's), against transformers building the tokenizer from the same file.

The vocabulary is trained here on each split, so that it holds words only that split makes
("(hello", "123", "'S"): a tokenizer that split otherwise would give other ids."""

import json
import warnings

import numpy as np
import pytest
from transformers import AutoTokenizer

from tilesim.models.gguf_tokenizer import from_gguf
from tilesim.models.readers import GGUFTensorReader

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "IT'S it's (hello) world.get() 12345 678,9 (hello) (world)",
    "a\r\n\n  b\t\t 1.5e-10 ''quoted'' Don'T DON'T 2024 20245",
    "x=1;\ny = [1, 22, 333]\n\tz (value) .get .set",
]
TEXTS = [*CORPUS, "(hello) 123456789 IT'S\r\n\r\nend", "Zürich naïve 2024!! (x)"]


def _finished(writer, path, rows: int):
    """The file, with the one tensor a reader needs beside the vocabulary."""
    writer.add_tensor("token_embd.weight", np.zeros((rows, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _trained(split: str | None):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
    if split is not None:
        level = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), level])
    tok.pre_tokenizer = level
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>", "</s>"]
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return vocab, merges


def _write(path, pre: str, split: str | None):
    vocab, merges = _trained(split)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab)
    writer.add_token_types([3, 3] + [1] * (len(vocab) - 2))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    return _finished(writer, path, rows=len(vocab))


@pytest.mark.parametrize(
    "pre, split",
    [("llama-bpe", LLAMA3), ("qwen2", LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")), ("gpt2", None)],
)
def test_text_is_split_as_the_files_pre_tokenizer_says(tmp_path, pre, split):
    path = _write(tmp_path / f"{pre}.gguf", pre, split)
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    ours = from_gguf(GGUFTensorReader(path))
    for text in TEXTS:
        assert ours.encode(text) == reference(text).input_ids, (pre, text)
        assert ours.decode(ours.encode(text)) == reference.decode(reference(text).input_ids)


def test_the_split_matters_for_these_vocabularies(tmp_path):
    """The test above can fail: the Llama 3 vocabulary read with GPT-2's split gives other ids."""
    llama3 = from_gguf(GGUFTensorReader(_write(tmp_path / "a.gguf", "llama-bpe", LLAMA3)))
    as_gpt2 = from_gguf(GGUFTensorReader(_write(tmp_path / "b.gguf", "gpt2", LLAMA3)))
    assert any(llama3.encode(t) != as_gpt2.encode(t) for t in TEXTS)


def test_an_unknown_pre_tokenizer_is_named_in_a_warning(tmp_path):
    path = _write(tmp_path / "odd.gguf", "some-new-model", None)
    with pytest.warns(UserWarning, match=r"pre-tokenizer 'some-new-model' is not one tilesim knows"):
        from_gguf(GGUFTensorReader(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_gguf(GGUFTensorReader(_write(tmp_path / "known.gguf", "llama-bpe", LLAMA3)))


def _sentencepiece_vocab():
    """Llama 2's layout: <unk>, <s>, </s>, the 256 byte tokens, then the pieces, scored by the
    order their merges were learned in, and a user-defined <think>."""
    from tokenizers import SentencePieceBPETokenizer

    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator(CORPUS * 20, vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    learned = trainer.get_vocab()
    pieces = sorted((t for t in learned if t not in ("<unk>", "<s>", "</s>")), key=learned.get)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces, "<think>"]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces), 4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0]
    return tokens, types, scores


def _add_sentencepiece(writer, prefix: bool | None = None) -> None:
    """The vocabulary's fields; no merges (llama.cpp's converter stores none for these)."""
    tokens, types, scores = _sentencepiece_vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if prefix is not None:
        writer.add_add_space_prefix(prefix)


def _write_sentencepiece(path, prefix: bool | None):
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_sentencepiece(writer, prefix)
    return _finished(writer, path, rows=len(_sentencepiece_vocab()[0]))


@pytest.mark.parametrize("prefix", [None, True])
def test_a_sentencepiece_vocabulary_tokenizes_as_transformers_builds_it(tmp_path, prefix):
    """Llama 2 / Mistral / TinyLlama GGUF files: merges ranked by score, bytes outside the
    vocabulary as <0xNN> tokens, spaces as '▁', a user-defined token kept whole."""
    path = _write_sentencepiece(tmp_path / "spm.gguf", prefix)
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    ours = from_gguf(GGUFTensorReader(path))
    unseen = ["hellothere 1234567 valuequoted", "abc 22333 .getworld"]  # words whose merges compete
    texts = [*TEXTS, *unseen, "  two leading spaces", "中文 🚀\nnew line", "say <think> then </s> end", ""]
    for text in texts:
        ids = reference(text).input_ids
        assert ours.encode(text) == ids, (prefix, text)
        assert ours.decode(ids) == reference.decode(ids), (prefix, text)
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    assert ours.encode("hello")[0] == 1  # llama.cpp adds <s> to these vocabularies unless told not to


def test_a_sentencepiece_vocabulary_without_the_space_prefix_puts_none_before_the_text(tmp_path):
    """`add_space_prefix: false`, which llama.cpp follows and transformers does not read: text
    that starts with a space is tokenized as with the prefix (the space is there already);
    other text starts without '▁'."""
    reference = AutoTokenizer.from_pretrained(
        str(tmp_path), gguf_file=_write_sentencepiece(tmp_path / "with.gguf", True).name
    )
    ours = from_gguf(GGUFTensorReader(_write_sentencepiece(tmp_path / "without.gguf", False)))
    for text in TEXTS:
        assert ours.encode(" " + text) == reference(" " + text).input_ids, text
        assert ours.decode(ours.encode(text), skip_special_tokens=True) == text  # no space came before it
        assert not reference.convert_ids_to_tokens(ours.encode(text)[1:2])[0].startswith("\u2581"), text


def _write_small(path, model="gpt2", merges=("a b",), scores=None, bos=None, template=None, fields=()):
    writer = gguf.GGUFWriter(str(path), "llama")
    if template is not None:
        writer.add_uint32("tokenizer.chat_template", template)
    for add, key, value in fields:  # fields of the wrong type or length, as a damaged file holds them
        getattr(writer, add)(key, value)
    writer.add_tokenizer_model(model)
    writer.add_token_list(["a", "b", "ab"])
    if merges is not None:
        writer.add_token_merges(list(merges))
    if scores is not None:
        writer.add_token_scores(list(scores))
    if bos is not None:
        writer.add_bos_token_id(bos)
    return _finished(writer, path, rows=3)


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"merges": ["ab"]}, "GGUF merge 1 is 'ab'; a merge is two tokens with a space between them"),
        ({"merges": ["a b c"]}, "GGUF merge 1 is 'a b c'"),
        ({"merges": ["a c"]}, r"cannot build a tokenizer from the GGUF vocabulary \(.*Token `c` out of vocabulary"),
        ({"model": "llama", "merges": None}, "SentencePiece GGUF vocabulary needs tokenizer.ggml.scores"),
        ({"model": "llama", "merges": None, "scores": [0.0, float("nan"), 1.0]}, "a number per token"),
        ({"bos": 99}, "tokenizer.ggml.bos_token_id 99 is not one of its 3 token ids"),
        ({"model": "bert"}, "GGUF tokenizer 'bert' is not supported"),
        ({"template": 5}, "GGUF tokenizer.chat_template is 5; it must be text"),  # jinja's TypeError at --chat
        # bool("no") is true; a type per token that does not say which token it is of
        ({"fields": [("add_string", "tokenizer.ggml.add_bos_token", "no")]}, "add_bos_token is 'no'; it must be true"),
        ({"fields": [("add_uint32", "tokenizer.ggml.add_space_prefix", 0)]}, "add_space_prefix is 0; it must be true"),
        ({"fields": [("add_array", "tokenizer.ggml.token_type", [1])]}, "token_type has 1 entries for 3 tokens"),
    ],
)
def test_a_vocabulary_that_cannot_be_read_is_named(tmp_path, fields, phrase):
    from tilesim.errors import CheckpointError

    with pytest.raises(CheckpointError, match=phrase) as caught:
        from_gguf(GGUFTensorReader(_write_small(tmp_path / "bad.gguf", **fields)))
    assert "\n" not in str(caught.value)


def test_a_text_prompt_through_a_sentencepiece_gguf_model_gives_transformers_ids_and_tokens(
    tmp_path, greedy_rule, capsys
):
    """End to end: a tiny Llama with the SentencePiece vocabulary, written as llama.cpp writes
    it; the prompt's ids and 8 greedy tokens against transformers loading the same file."""
    import torch
    import transformers as T

    import tilesim
    from tilesim.cli.main import main

    from .gguf_files import write_gguf

    config = T.LlamaConfig(
        hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
        vocab_size=len(_sentencepiece_vocab()[0]), max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    source = T.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in source.parameters():
            p.mul_(3.0)
    source.save_pretrained(tmp_path / "source")
    path = write_gguf(tmp_path / "source", tmp_path / "spm-llama.gguf", "F32", tokenizer=_add_sentencepiece)
    text = "hellothere (world) 12345"
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    reference = T.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    ids = tokenizer(text).input_ids
    with torch.no_grad():
        gen = reference.eval().generate(
            torch.tensor([ids]), max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True,
            eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    model = tilesim.load(str(path), device="tiny", tp=3)
    assert model.checkpoint.tokenizer().encode(text) == ids
    out = model.generate([ids], max_new_tokens=8, eos_token_id=None, return_logits=True)
    expected = gen.sequences[0, len(ids) :].tolist()
    greedy_rule(out.tokens[0], expected, [step[0].numpy() for step in gen.logits], 1e-4, "spm gguf")
    capsys.readouterr()
    assert main(["generate", str(path), "--device", "tiny", "--prompt", text, "--max-new-tokens", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["prompt_tokens"] == ids


def _tiny_llama_gguf(tmp_path, name: str, vocab_size: int, add_tokenizer):
    """A one-layer Llama carrying a vocabulary: llama.cpp loads a vocabulary only with a model."""
    import transformers as T

    from .gguf_files import write_gguf

    config = T.LlamaConfig(
        hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=vocab_size, max_position_embeddings=256,
    )  # fmt: skip
    T.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / f"{name}-source")
    return write_gguf(tmp_path / f"{name}-source", tmp_path / f"{name}.gguf", "F32", tokenizer=add_tokenizer)


@pytest.mark.parametrize("pre, split", [("llama-bpe", LLAMA3), ("qwen2", LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}"))])
def test_byte_level_ids_are_llama_cpps(tmp_path, pre, split):
    """Against llama.cpp itself, where its Python binding is built (`make bench-llamacpp`;
    skipped otherwise, as in `make test`)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    vocab, merges = _trained(split)

    def add(writer):
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(vocab)
        writer.add_token_types([3, 3] + [1] * (len(vocab) - 2))
        writer.add_token_merges(merges)

    path = _tiny_llama_gguf(tmp_path, pre, len(vocab), add)
    reference = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ours = from_gguf(GGUFTensorReader(path))
    for text in [*TEXTS, "hellothere 1234567 valuequoted", "  two leading spaces", "say <s> then </s> end"]:
        assert ours.encode(text) == reference.tokenize(text.encode(), add_bos=False, special=True), text


def test_sentencepiece_ids_are_llama_cpps_where_transformers_and_llama_cpp_agree(tmp_path):
    """llama.cpp puts a space before text that starts with one and after every special or
    user-defined token; transformers, whose tokens tilesim follows, does neither (README).
    Elsewhere the ids are llama.cpp's. Skipped where llama.cpp's binding is not built."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = _tiny_llama_gguf(tmp_path, "spm", len(_sentencepiece_vocab()[0]), _add_sentencepiece)
    reference = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ours = from_gguf(GGUFTensorReader(path))
    for text in [*TEXTS, "hellothere 1234567 valuequoted", "中文 🚀\nnew line", "a  b", "end <think>"]:
        assert ours.encode(text) == reference.tokenize(text.encode(), add_bos=True, special=True), text
    assert ours.encode(" x") != reference.tokenize(b" x", add_bos=True, special=True)  # the difference, as stated
