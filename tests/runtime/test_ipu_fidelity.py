"""PopTransformer's GPT2-XL table on IPUs (sharding mode: 6 layers on each of 8 IPUs, in turn).

The ipu-gc200 preset's two fitted figures (a compute set's launch; the products' fraction of
the FP16 peak) were fitted on its four rows (benchmarks/calibrate.py --ipu). The four C600
rows of the same page were not fitted: the c600 preset takes the same cycle counts at its
own clock, so they judge the fit.
"""

import pytest

import tilesim
from tilesim.cli.main import main
from tilesim.device.spec import load_preset
from tilesim.fidelity import load_ipu_rows, predict_ipu

ROWS = load_ipu_rows()


def test_the_table_has_both_devices_rows():
    want = [(i, b) for i in ("c600", "ipu-gc200") for b in (1, 8, 16, 24)]
    assert sorted((r.instance, r.batch) for r in ROWS) == want


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.instance}-b{r.batch}")
def test_each_published_decode_step_is_predicted_within_15_percent(row):
    result = predict_ipu(row)
    assert abs(result["tpot_error"]) <= 0.15, result


def test_the_c600_runs_the_gc200s_fitted_cycles_at_its_own_clock():
    gc200, c600 = load_preset("ipu-gc200").core, load_preset("c600").core
    cycles = gc200.kernel_overhead_s * gc200.clock_hz
    assert c600.kernel_overhead_s * c600.clock_hz == pytest.approx(cycles, rel=2e-3)
    assert c600.efficiency["matmul"] == gc200.efficiency["matmul"]


def test_a_rows_prediction_is_the_decode_step_a_generate_run_shows():
    row = next(r for r in ROWS if r.instance == "ipu-gc200" and r.batch == 8)
    model = tilesim.load(
        "gpt2-xl", device="ipu-gc200", tp=1, pp=8, dtype="fp16", act_dtype="fp16", kv_dtype="fp16",
        timing_only=True, batch=8, max_context=264, decode_buckets=[264], prefill_buckets=[16],
    )  # fmt: skip
    assert model.stages.layers == (6,) * 8
    out = model.generate([[0] * 16] * 8, max_new_tokens=3, eos_token_id=None)
    decode = [s.latency for s in out.trace.steps if s.phase == "decode"]
    assert decode and all(t == pytest.approx(predict_ipu(row)["predicted_tpot_s"], rel=1e-12) for t in decode)
    assert out.report["pipeline"]["pp"] == 8


def test_tilesim_fidelity_prints_the_ipu_rows(capsys):
    assert main(["fidelity", "--device", "ipu-gc200,c600"]) == 0
    text = capsys.readouterr().out
    assert "GPT2-XL on 8 IPUs" in text and "c600 (predicted, not fitted)" in text
