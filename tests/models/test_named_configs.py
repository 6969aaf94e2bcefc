"""Every named config (models/configs/, published dimensions) loads timing-only, times a step,
and has the parameter count its publisher states; an architecture tilesim does not run is
refused by name, nothing half-loaded."""

import json
from importlib import resources

import numpy as np
import pytest
from safetensors.numpy import save_file

import tilesim
from tilesim.errors import CheckpointError
from tilesim.models.named import named_configs

PUBLISHED = {  # parameters as each model card states them
    "llama-2-7b": 6.74e9, "llama-2-13b": 13.0e9, "llama-2-70b": 69.0e9, "llama-3-8b": 8.03e9,
    "llama-3-70b": 70.6e9, "mistral-7b": 7.24e9, "mixtral-8x7b": 46.7e9, "opt-13b": 12.9e9,
    "opt-30b": 30.0e9, "opt-66b": 65.7e9, "gpt2-xl": 1.56e9, "bloom-7b1": 7.07e9, "bloom-176b": 176.2e9,
    "chatglm-6b": 6.2e9, "chatglm2-6b": 6.24e9, "glm-4-9b": 9.4e9, "rwkv-4-169m-pile": 169e6, "rwkv-4-7b": 7.39e9,
    "qwen3-8b": 8.2e9, "qwen3-30b-a3b": 30.5e9,
}  # fmt: skip
EMBEDDING_ONCE = {"chatglm-6b"}  # its card counts the embedding once; the checkpoint's LM head is its own matrix


def test_every_named_config_has_a_published_size():
    assert sorted(PUBLISHED) == named_configs()


def test_the_command_line_help_names_every_named_config(capsys, monkeypatch):
    from tilesim.cli.main import main

    monkeypatch.setenv("COLUMNS", "10000")  # argparse wraps its help at hyphens too
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    shown = capsys.readouterr().out
    assert [name for name in PUBLISHED if name not in shown] == []


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_named_config_times_and_has_its_published_size(name):
    model = tilesim.load(name, device="trn1.32xlarge", tp=32, timing_only=True, max_context=512, pad_heads=True)
    cfg = model.checkpoint.config
    counted = cfg.params - (cfg.vocab_size * cfg.hidden if name in EMBEDDING_ONCE else 0)
    assert counted == pytest.approx(PUBLISHED[name], rel=0.015)
    report = model.generate([[0] * 64], max_new_tokens=3).report
    assert report["steps"] == 3 and report["ttft_s"] > report["tpot_s"]["mean"] > 0


@pytest.mark.parametrize(("model_type", "architecture"), [("mamba", "MambaForCausalLM"), ("phi", "PhiForCausalLM")])
def test_an_architecture_tilesim_does_not_run_is_refused_by_name(tmp_path, model_type, architecture):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [architecture]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"model_type '{model_type}' is not supported; tilesim runs: bloom"):
        tilesim.load(str(tmp_path), device="tiny", tp=1)


def test_chatglm_v1_weights_are_refused_before_anything_loads(tmp_path):
    config = json.loads((resources.files("tilesim.models.configs") / "chatglm-6b.json").read_text())
    small = dict(config, num_layers=1, hidden_size=64, vocab_size=128, eos_token_id=2)  # its eos is past 128
    (tmp_path / "config.json").write_text(json.dumps(small))
    save_file({"transformer.word_embeddings.weight": np.zeros((128, 64), np.float32)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"ChatGLM-6B v1 .* runs timing-only"):
        tilesim.load(str(tmp_path), device="tiny", tp=1)
    model = tilesim.load(str(tmp_path), device="tiny", tp=1, timing_only=True, max_context=64)
    assert model.checkpoint.config.norm == "layer" and model.checkpoint.config.activation == "gelu_tanh"
