"""Bad checkpoints raise CheckpointError naming the file and the tensor, before anything is placed."""

import json
import re
import shutil
from contextlib import nullcontext

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tilesim
from tilesim.errors import CheckpointError, GenerationError, NumericalError, OutOfOffchipMemory, ShardingError


def copy(folder, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(folder, target)
    return target


def test_a_missing_folder_or_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        tilesim.load(str(tmp_path / "nowhere"), device="tiny", tp=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        tilesim.load(str(tmp_path / "empty"), device="tiny", tp=1)


def test_a_near_miss_of_a_name_a_folder_of_gguf_files_or_a_config_file_gets_the_way_there(tiny_model, tmp_path):
    for name, suggested in (("SmolLM2", "smollm2"), ("Llama-2-7b", "llama-2-7b"), ("llama2-70b", "llama-2-70b")):
        for timing_only in (False, True):
            with pytest.raises(CheckpointError, match=rf"no such file.* \(did you mean {suggested}\?\)"):
                tilesim.load(name, device="tiny", tp=1, timing_only=timing_only)
    with pytest.raises(CheckpointError) as far:
        tilesim.load("qwerty", device="tiny", tp=1)
    assert "did you mean" not in str(far.value)
    downloaded = tmp_path / "hub"
    downloaded.mkdir()
    (downloaded / "model.Q8_0.gguf").write_bytes(b"GGUF")
    for timing_only in (False, True):
        with pytest.raises(CheckpointError, match=r"no config\.json, but it holds model\.Q8_0\.gguf: give the \.gguf"):
            tilesim.load(str(downloaded), device="tiny", tp=1, timing_only=timing_only)
    config = tiny_model("llama") / "config.json"
    with pytest.raises(CheckpointError, match=r"config\.json: give the folder that holds it"):
        tilesim.load(str(config), device="tiny", tp=1)


def test_pickled_checkpoints_are_refused_with_how_to_convert(tiny_model, tmp_path):
    folder = copy(tiny_model("gpt2"), tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a pickled checkpoint.*safetensors"):
        tilesim.load(str(folder), device="tiny", tp=1)
    with pytest.raises(CheckpointError, match="pickled checkpoint"):
        tilesim.load(str(folder / "pytorch_model.bin"), device="tiny", tp=1)


def test_a_missing_tensor_is_named(tiny_model, tmp_path):
    folder = copy(tiny_model("llama"), tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_a_shape_that_disagrees_with_the_config_is_named(tiny_model, tmp_path):
    folder = copy(tiny_model("opt"), tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.decoder.layers.0.fc1.weight"] = np.zeros((90, 48), np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: tensor 'model\.decoder\.layers\.0\.fc1\.weight' has shape \(90, 48\), "
        r"but the config implies \(88, 48\)",
    ):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_tensors_the_config_does_not_use_are_named_in_a_warning_as_transformers_names_them(tiny_model, tmp_path):
    """A config cut to fewer layers than the file holds runs its own layers (transformers
    does the same, and warns); saved buffers (causal masks, rotary frequencies) pass quietly."""
    import warnings

    folder = copy(tiny_model("llama"), tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    save_file(tensors, folder / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tilesim.load(str(folder), device="tiny", tp=1)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.warns(UserWarning, match=r"not used \('model\.layers\.1\..*holds 2 layers and its config asks for 1"):
        tilesim.load(str(folder), device="tiny", tp=1)
    tensors["extra.weight"] = np.ones(4, np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.warns(UserWarning, match=r"10 of the checkpoint's tensors not used \('extra\.weight', "):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_a_truncated_file_is_named(tiny_model, tmp_path):
    folder = copy(tiny_model("gptj"), tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated: tensor .* ends at byte"):
        tilesim.load(str(folder), device="tiny", tp=1)


def _rewrite_header(path, change) -> None:
    """The safetensors file at `path` with its JSON header changed by `change`, data as it was."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        # safetensors' own check said only "invalid shape, data type, or offset", as a traceback
        (lambda h: h["lm_head.weight"].update(shape=[1]), r"'lm_head\.weight': shape \[1\] of F32 is 4 bytes, but"),
        (lambda h: h["lm_head.weight"].update(dtype="I64"), r"'lm_head\.weight': shape \[101, 48\] of I64 is 38784"),
        (lambda h: h["lm_head.weight"].pop("data_offsets"), r"'lm_head\.weight' lacks a dtype, shape or data_offsets"),
        (lambda h: h["lm_head.weight"].update(shape=[-1, 48]), r"'lm_head\.weight': shape \[-1, 48\] or data_offsets"),
    ],
)
def test_a_header_whose_shapes_and_offsets_disagree_is_named(tiny_model, tmp_path, change, phrase):
    folder = copy(tiny_model("llama"), tmp_path)
    _rewrite_header(folder / "model.safetensors", change)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor " + phrase):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_what_only_the_safetensors_library_checks_is_one_error_naming_the_file(tiny_model, tmp_path):
    """Two tensors over the same bytes: each header entry is sound alone; safetensors refuses
    the layout, and said so as a traceback."""
    folder = copy(tiny_model("llama"), tmp_path)

    def overlap(header):
        first, second = [k for k in sorted(header) if k != "__metadata__" and header[k]["shape"] == [48]][:2]
        header[second]["data_offsets"] = header[first]["data_offsets"]

    _rewrite_header(folder / "model.safetensors", overlap)
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: not a readable safetensors file \(.*invalid offset"
    ):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_sharded_checkpoints_with_an_index_load_and_missing_shards_are_named(tiny_model, tmp_path):
    folder = copy(tiny_model("llama"), tmp_path)
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, folder / file)
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: f for f, keys in parts.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    whole = tilesim.load(str(tiny_model("llama")), device="tiny", tp=1).generate([[5, 6, 7]], 4, eos_token_id=None)
    sharded = tilesim.load(str(folder), device="tiny", tp=1).generate([[5, 6, 7]], 4, eos_token_id=None)
    assert whole.tokens[0].tolist() == sharded.tokens[0].tolist()
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: missing"):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_an_unsupported_architecture_lists_the_supported_ones(tiny_model, tmp_path):
    folder = copy(tiny_model("gpt2"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model_type 'bert' is not supported; tilesim runs: .*gpt2.*llama"):
        tilesim.load(str(folder), device="tiny", tp=1)


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (lambda c: [c], "a config must be a JSON object of fields, not list"),
        (lambda c: {**c, "eos_token_id": "x"}, "'eos_token_id' is 'x'; it must be a token id or a list of them"),
        (lambda c: {**c, "rms_norm_eps": "x"}, "'rms_norm_eps' is 'x'; it must be a number of at least 0"),
        (lambda c: {**c, "rms_norm_eps": -1}, "'rms_norm_eps' is -1; it must be a number of at least 0"),
        # both keys: transformers takes the older key's scaling, which tilesim does not run
        (lambda c: {**c, "rope_scaling": {"rope_type": "longrope", "factor": 4.0}}, "rope scaling 'longrope' is not"),
        # a graph of 1e9 layers took forever to build; a base of 0 made the rotary frequencies infinite
        (lambda c: {**c, "num_hidden_layers": 10**9}, "'num_hidden_layers' is 1000000000; it must be at most 1,024"),
        (lambda c: {**c, "vocab_size": 10**12}, "'vocab_size' is 1000000000000; it must be at most 16,777,216"),
        (lambda c: {**c, "rope_theta": 0}, "'rope_theta' is 0; a rotary base must be a number more than 0"),
        (lambda c: {**c, "rope_theta": -1}, "'rope_theta' is -1; a rotary base must be a number more than 0"),
        (lambda c: {**c, "rope_parameters": {"rope_type": "default", "rope_theta": 0.0}}, "a rotary base must be"),
        # taken as true (a non-empty string), or a grouping of heads that does not exist: runs, wrongly
        (lambda c: {**c, "tie_word_embeddings": "no"}, "'tie_word_embeddings' is 'no'; it must be true or false"),
        (lambda c: {**c, "attention_bias": "no"}, "'attention_bias' is 'no'; it must be true or false"),
        (lambda c: {**c, "rope_parameters": "x"}, "'rope_parameters' is 'x'; it must be an object"),  # a ValueError
        (lambda c: {**c, "num_key_value_heads": 4}, "'num_key_value_heads' is 4, which does not divide"),
    ],
)
def test_a_config_value_of_the_wrong_kind_is_named(tiny_model, tmp_path, change, phrase):
    folder = copy(tiny_model("llama"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(config)))
    with pytest.raises(CheckpointError, match=phrase):
        tilesim.load(str(folder), device="tiny", tp=1)


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip


@pytest.mark.parametrize(
    ("rope", "phrase"),
    [
        # each was a KeyError, a ZeroDivisionError or a TypeError from the frequencies' arithmetic
        ({"rope_type": "linear"}, "linear rope scaling needs 'factor'"),
        ({"rope_type": "linear", "factor": 0}, "'factor' is 0; it must be a number more than 0"),
        ({"rope_type": "llama3", "factor": 8.0}, "llama3 rope scaling needs 'low_freq_factor'"),
        ({**LLAMA3, "low_freq_factor": 0}, "'low_freq_factor' is 0; it must be a number more than 0"),
        ({**LLAMA3, "high_freq_factor": 0.5}, "'high_freq_factor' 0.5 is below 'low_freq_factor' 1"),
        ({**LLAMA3, "original_max_position_embeddings": "8k"}, "'original_max_position_embeddings' is '8k'"),
        ({"rope_type": "yarn"}, "yarn rope scaling needs 'factor'"),
        ({**YARN, "factor": 0.5}, "'factor' is 0.5; it must be a number of at least 1"),
        ({**YARN, "beta_fast": -1}, "'beta_fast' is -1; it must be a number of at least 0"),
        ({**YARN, "attention_factor": True}, "'attention_factor' is True"),
        ({**YARN, "original_max_position_embeddings": 0}, "'original_max_position_embeddings' is 0"),
    ],
)
def test_a_rope_scaling_value_that_cannot_compute_is_named_before_the_load(tiny_model, tmp_path, rope, phrase):
    folder = copy(tiny_model("llama"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": rope, "rope_parameters": None}))
    with pytest.raises(CheckpointError, match=phrase):
        tilesim.load(str(folder), "tiny", tp=1, progress=lambda done, total: pytest.fail("a weight was read"))


def test_a_yarn_scaling_without_its_original_context_takes_the_configs(tiny_model, tmp_path):
    """transformers' default for a missing original context; null is read as missing."""
    folder = copy(tiny_model("llama"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    logits = []
    for original in (config["max_position_embeddings"], None):
        (folder / "config.json").write_text(
            json.dumps(
                {
                    **config,
                    "rope_parameters": None,
                    "rope_scaling": {**YARN, "original_max_position_embeddings": original},
                }
            )
        )
        out = tilesim.load(str(folder), "tiny", tp=1).generate([[5, 6, 7]], 1, eos_token_id=None, return_logits="all")
        logits.append(out.logits[0])
    np.testing.assert_array_equal(logits[0], logits[1])


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (
            {"num_local_experts": "x"},
            "'num_local_experts' is 'x'; it must be a whole number of at least 1",
        ),  # was a ValueError
        ({"num_experts": 3}, "'num_experts' 3 and 'num_local_experts' 4 disagree"),
        ({"num_experts_per_tok": 5}, "num_experts_per_tok=5 must be between 1 and num_experts=4"),
        ({"mlp_only_layers": "x"}, "'mlp_only_layers' is 'x'; it must be a list of layer numbers"),
        ({"decoder_sparse_step": 0}, "'decoder_sparse_step' is 0; it must be a whole number of at least 1"),
        ({"norm_topk_prob": "yes"}, "'norm_topk_prob' is 'yes'; it must be true or false"),
        ({"mlp_only_layers": []}, r"tensor 'model\.layers\.1\.mlp\.gate\.weight' is missing"),  # layer 1 is dense
    ],
)
def test_a_qwen3_moe_config_that_does_not_match_its_experts_is_named(tiny_model, tmp_path, change, phrase):
    folder = copy(tiny_model("qwen3_moe"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=phrase):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_an_end_of_sequence_id_past_the_vocabulary_is_warned_about(tiny_model, tmp_path):
    """transformers loads such a config too; no step can produce the id, so a run never stops there."""
    folder = copy(tiny_model("llama"), tmp_path)
    (folder / "generation_config.json").unlink()  # whose ids transformers' generate takes first
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": [2, config["vocab_size"] + 5]}))
    with pytest.warns(tilesim.TilesimWarning, match=rf"'eos_token_id' {config['vocab_size'] + 5} is outside the vocab"):
        model = tilesim.load(str(folder), device="tiny", tp=1)
    assert model.graph.meta["eos_token_ids"] == (2, config["vocab_size"] + 5)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": config["vocab_size"]}))
    with pytest.warns(tilesim.TilesimWarning, match=r"generation_config\.json: 'eos_token_id' 101 is outside the"):
        model = tilesim.load(str(folder), device="tiny", tp=1)
    assert model.graph.meta["eos_token_ids"] == (config["vocab_size"],)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('{"eos_token_id": "</s>"}', r"generation_config\.json: 'eos_token_id' is '</s>'; it must be a token id"),
        ('{"eos_token_id": [2, 2.0]}', r"generation_config\.json: 'eos_token_id' is \[2, 2\.0\]; it must be a token"),
        ("[2]", r"generation_config\.json: a generation config must be a JSON object of fields, not list"),
    ],
)
def test_a_generation_config_whose_stops_are_not_ids_is_named(tiny_model, tmp_path, text, phrase):
    """transformers loads these and fails in generate (a TypeError from torch) or at load."""
    folder = copy(tiny_model("llama"), tmp_path)
    (folder / "generation_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=phrase):
        tilesim.load(str(folder), device="tiny", tp=1)


def test_heads_that_do_not_divide_name_the_heads_and_the_degrees_that_work(tiny_model):
    with pytest.raises(
        ShardingError,
        match=r"6 attention heads and 3 key/value heads, which cannot be split over 2 cores; "
        r"use a tensor-parallel degree of 1, 3, 6",
    ):
        tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=2), tp=2)
    with pytest.raises(
        ShardingError,
        match=r"has 6 attention heads, which cannot be split over 4 cores; use a tensor-parallel degree of 1, 2, 3, 6",
    ):
        tilesim.load(str(tiny_model("gpt2")), device=tilesim.Device("tiny", cores=4), tp=4)


def test_errors_and_warnings_name_the_model_as_its_user_named_it(tmp_path, tiny_model):
    """Not its architecture: smollm2 and llama-2-7b are both "llama" to the graph builder."""
    with pytest.raises(ShardingError, match=r"^smollm2 has 9 attention heads and 3 key/value heads, which cannot"):
        tilesim.load("smollm2", device="trn1", tp=2, timing_only=True)
    with pytest.warns(tilesim.TilesimWarning, match=r"beyond the 4096 positions llama-2-7b was trained for"):
        tilesim.load("llama-2-7b", device="trn1.32xlarge", tp=8, timing_only=True, max_context=8192)
    mine = copy(tiny_model("llama"), tmp_path)  # a folder as given, not the "llama" its graph is built as
    with pytest.raises(ShardingError, match=rf"^{re.escape(str(mine))} has 6 attention heads"):
        tilesim.load(str(mine), device=tilesim.Device("tiny", cores=4), tp=4)


def test_a_model_that_does_not_fit_fails_before_loading_with_per_core_totals(tiny_model):
    device = tilesim.Device("tiny", cores=1, offchip_bytes="200 KiB")
    with pytest.raises(
        OutOfOffchipMemory,
        match=r"does not fit on 1 core\(s\) of tiny: core 0 needs .* of off-chip memory "
        r"\(weights .*, KV cache .*\) but has 200 KiB; use a higher `tp`",
    ):
        tilesim.load(str(tiny_model("gpt2")), device=device, tp=1)
    assert device.cores[0].memory.used == 0  # nothing was half-loaded


def test_prompts_longer_than_the_compiled_context_are_refused(tiny_model):
    model = tilesim.load(str(tiny_model("gpt2")), device="tiny", tp=1, max_context=32)
    with pytest.raises(GenerationError, match="compiled for max_context=32"):
        model.generate([list(range(30))], max_new_tokens=8)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        model.generate([[5, 500]], max_new_tokens=2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinity_in_the_weights_stops_the_run_with_one_clear_error(tiny_model, tmp_path, bad):
    # the kernels propagate NaN and infinity as IEEE arithmetic does (docs/numerics.md), so the
    # logits show them and generation stops instead of choosing a token from them
    folder = copy(tiny_model("llama"), tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.mlp.down_proj.weight"][3, 5] = bad
    save_file(tensors, folder / "model.safetensors")
    model = tilesim.load(str(folder), device="tiny", tp=3)
    with pytest.raises(NumericalError, match=r"logits of step 0 \(prefill\) hold NaN or infinity"):
        model.generate([[5, 6, 7]], max_new_tokens=3)


@pytest.mark.parametrize(
    ("name", "text", "chat", "phrase"),
    [
        ("config.json", "[" * 100_000 + "]" * 100_000, False, "config.json: cannot read the config"),
        ("tokenizer_config.json", "{nope", False, "tokenizer_config.json: cannot read the tokenizer's config"),
        ("tokenizer_config.json", "[1, 2]", False, "the tokenizer's config must be a JSON object"),
        ("tokenizer_config.json", "[" * 100_000 + "]" * 100_000, False, "cannot read the tokenizer's config"),
        ("tokenizer_config.json", '{"chat_template": 5}', False, "'chat_template' must be text or a list of named"),
        ("tokenizer_config.json", '{"bos_token": 5}', False, "'bos_token' is 5; it must be the token's text"),
        ("chat_template.jinja", b"\xff\xfe bad", False, "chat_template.jinja: cannot read the chat template"),
        ("chat_template.jinja", "{% for i in range(10**9) %}x{% endfor %}", True, "its ranges hold more than 1,000"),
        # nested ranges, each within the sandbox's 100,000: 10^10 iterations ran for hours
        (
            "chat_template.jinja",
            "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}",
            True,
            "template does not render: its ranges hold more than 1,000,000 items in all",
        ),
        ("chat_template.jinja", "{{ 1 / 0 }}", True, "template does not render: division by zero"),
        ("model.safetensors.index.json", "[1]", False, "index.json: not a safetensors index: its 'weight_map'"),
        ("model.safetensors.index.json", '{"weight_map": {"a": 5}}', False, "must map tensor names to files in"),
        ("model.safetensors.index.json", '{"weight_map": {"a": "../other/model.safetensors"}}', False, "files in the"),
    ],
)
def test_damaged_tokenizer_files_and_indexes_are_named(capsys, tiny_model, tmp_path, name, text, chat, phrase):
    """Each was a ValueError, AttributeError, TypeError, RecursionError or jinja's OverflowError;
    an index could name a shard outside its folder."""
    from tilesim.cli.main import main

    folder = copy(tiny_model("llama"), tmp_path)
    (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["generate", str(folder), "--device", "tiny", "--prompt", "hi", "--max-new-tokens", "2"]
                + ["--chat"] * chat)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("rope", "context", "phrase"),
    [({"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
       "original_max_position_embeddings": 64}, 256, "rope scaling 'longrope' is not supported .* timing-only"),
     # within the config's 256 positions it computes (tests/models/test_against_transformers.py)
     ({"rope_type": "dynamic", "factor": 4.0}, 512, "a run of 512 positions goes past them.*timing-only")],
)  # fmt: skip
def test_a_rope_type_that_does_not_compute_here_is_refused_before_the_load_but_times(
    tiny_model, tmp_path, rope, context, phrase
):
    """Its times are the plain rope's (the frequencies change no cost); a run that computes is
    refused before any weight is read."""
    folder = copy(tiny_model("llama"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": rope}))

    def beyond():  # a run past the config's positions is warned of
        return pytest.warns(tilesim.TilesimWarning, match="beyond the 256") if context > 256 else nullcontext()

    with pytest.raises(CheckpointError, match=phrase), beyond():
        tilesim.load(str(folder), "tiny", tp=3, max_context=context, progress=lambda *_: pytest.fail("read a weight"))
    times = []
    for f in (folder, tiny_model("llama")):
        with beyond():
            model = tilesim.load(str(f), "tiny", tp=3, timing_only=True, max_context=context)
        times.append(model.generate([[5, 6, 7]], 4).report)
    assert times[0]["ttft_s"] == times[1]["ttft_s"] and times[0]["tpot_s"] == times[1]["tpot_s"]


def test_a_yarn_model_is_warned_only_past_the_context_its_scaling_extends_to(tiny_model, tmp_path):
    """As Qwen2.5 is run long: 256 positions in the config, YaRN by a factor of 8 over an
    original 64 extends them to 512; past those the warning names 512."""
    import warnings

    folder = copy(tiny_model("qwen2_yarn"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    scaling = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64}  # the older key, as Qwen2.5's
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": scaling, "rope_parameters": None}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", tilesim.TilesimWarning)
        tilesim.load(str(folder), "tiny", tp=3, timing_only=True, max_context=512)
    with pytest.warns(tilesim.TilesimWarning, match=r"beyond the 512 positions .*'s YaRN scaling extends its context"):
        tilesim.load(str(folder), "tiny", tp=3, timing_only=True, max_context=1024)
