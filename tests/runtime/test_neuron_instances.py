"""The multi-chip instance presets: heads padded as transformers-neuronx pads them, and the
fabric's links inside and between chips. (Their fit to the published rows: test_fidelity_table.py.)"""

import tilesim


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
