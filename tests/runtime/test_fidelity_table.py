"""The Neuron SDK 2.18 Llama-2 table: every published configuration is expressible (the 70B
rows at TP 24 need grouped-query heads padded and replicated), and the table's predictions
are the times a `generate` run of the same request shows."""

import warnings

import numpy as np
import pytest

import tilesim
from tilesim.cli.main import main
from tilesim.fidelity import load_latency_rows, predict_latency

ROWS = load_latency_rows()


def test_the_table_holds_the_34_published_rows():
    assert len(ROWS) == 34
    assert {(r.instance, r.tp) for r in ROWS} == {("trn1.32xlarge", 32), ("inf2.48xlarge", 24)}


@pytest.mark.parametrize("index", [i for i, r in enumerate(ROWS) if r.model == "Llama-2-70b" and r.tp == 24])
def test_llama_2_70b_runs_at_tp_24_with_its_heads_padded_and_replicated(index):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = predict_latency(ROWS[index])
    assert result["heads"] == [72, 8]  # 3 query heads and one key/value head on each of 24 cores
    assert np.isfinite(result["predicted_ttft_s"]) and result["predicted_ttft_s"] > 0
    assert np.isfinite(result["predicted_tpot_s"]) and result["predicted_tpot_s"] > 0


def test_a_rows_prediction_is_what_generate_shows_for_the_same_request():
    row = next(r for r in ROWS if r.model == "Llama-2-70b" and r.instance == "inf2.48xlarge" and r.input_len == 128)
    predicted = predict_latency(row)
    model = tilesim.load(
        "llama-2-70b", device=tilesim.Device(row.instance, cores=row.tp, backed=False), tp=row.tp, dtype="fp16",
        act_dtype="bf16", kv_dtype="bf16", timing_only=True, pad_heads=True, batch=row.batch, max_context=256,
    )  # fmt: skip
    out = model.generate([[0] * row.input_len] * row.batch, max_new_tokens=row.output_len, eos_token_id=None)
    decode = [s.latency for s in out.trace.steps if s.phase == "decode"]
    assert len(decode) == row.output_len - 1
    assert predicted["predicted_ttft_s"] == out.trace.steps[0].latency
    assert len(decode) % 2 == 1 and predicted["predicted_tpot_s"] == float(np.median(decode))


def test_the_command_refuses_an_instance_with_no_rows(capsys):
    assert main(["fidelity", "--device", "a100"]) == 2
    assert "--device 'a100': no published rows" in capsys.readouterr().err
