"""A GGUF's tokenizer splits text as its `tokenizer.ggml.pre` says (Llama 3's and Qwen2's
splits differ from GPT-2's), against transformers building the tokenizer from the same file.

The vocabulary is trained here on each split, so that it holds words only that split makes
("(hello", "123", "'S"): a tokenizer that split otherwise would give other ids."""

import json
import warnings

import numpy as np
import pytest
from transformers import AutoTokenizer

from tilesim.models.readers import GGUFTensorReader
from tilesim.models.tokenizer import from_gguf

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
    writer.add_tensor("token_embd.weight", np.zeros((len(vocab), 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


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
