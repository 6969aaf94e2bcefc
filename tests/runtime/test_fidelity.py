"""The calibrated presets against the published measurements they were fitted to, and the
multi-chip instance presets' fabric."""

from pathlib import Path

import pytest

import tilesim
from tilesim.fidelity import load_rows, predict

CSV = Path(__file__).parents[2] / "benchmarks" / "calibration" / "neuron_published.csv"
ROWS = load_rows(CSV)


def test_the_calibration_file_is_read_as_its_readme_says():
    first = ROWS[0]
    assert (first.model, first.instance, first.tp, first.input_len, first.output_len) == (
        "Llama-2-13b",
        "trn1.32xlarge",
        32,
        1024,
        1024,
    )
    assert first.published_s == pytest.approx(2048 / 230.3)
    opt = next(r for r in ROWS if r.model == "opt-13b")
    assert opt.input_len is None and opt.published_s == pytest.approx(0.0198)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.model}-{r.instance}-tp{r.tp}-{r.input_len}-{r.output_len}")
def test_every_row_is_predicted_within_15_percent(row):
    result = predict(row)
    assert abs(result["error"]) <= 0.15, result


def test_llama_2_13b_pads_its_40_heads_to_64_on_32_cores():
    checkpoint = tilesim.models.named.open_for_timing("llama-2-13b")
    from tilesim.runtime.model import Model

    model = Model(
        checkpoint,
        tilesim.Device("trn1.32xlarge", backed=False),
        32,
        timing_only=True,
        pad_heads=True,
        dtype="fp16",
        max_context=256,
    )
    assert model.sp.heads == (64, 64)
    out = model.generate([[0] * 16], 2, eos_token_id=None)
    assert any("40 attention heads padded to 64" in note for note in out.report["memory"]["notes"])


def test_cores_of_one_chip_talk_over_faster_links():
    dev = tilesim.Device("trn1.32xlarge")
    same_chip = dev.topology.transfer_time(0, 1, 1 << 20)
    next_chip = dev.topology.transfer_time(1, 2, 1 << 20)
    assert same_chip < next_chip / 3
    inf = tilesim.Device("inf2.48xlarge")
    assert inf.spec.fabric.topology == "ring" and inf.num_cores == 24
    assert inf.topology.transfer_time(2, 3, 1 << 20) < inf.topology.transfer_time(3, 4, 1 << 20)
