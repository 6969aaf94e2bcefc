"""`tilesim profile` writes a trace and plots; `tilesim sweep` compares configurations."""

import json

import pytest

from tilesim.cli.main import main


def test_profile_writes_the_trace_and_the_plots(capsys, tiny_model, tmp_path):
    trace, plots = tmp_path / "t.json", tmp_path / "out"
    code = main(
        [
            "profile",
            str(tiny_model("llama")),
            "--device",
            "tiny",
            "--tp",
            "3",
            "--chat",
            "--prompt",
            "w3 w4",
            "--max-new-tokens",
            "4",
            "--trace",
            str(trace),
            "--plots",
            str(plots),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "critical path of one decode step" in out and "utilisation" in out
    assert json.loads(trace.read_text())["traceEvents"]
    assert sorted(p.name for p in plots.iterdir()) == ["breakdown.png", "memory.png", "roofline.png", "timeline.png"]


def test_sweep_rows_for_what_fits_and_reasons_for_what_does_not(capsys, tiny_model, tmp_path):
    plot = tmp_path / "sweep.png"
    code = main(
        [
            "sweep",
            str(tiny_model("gpt2")),
            "--device",
            "tiny,trn1",
            "--tp",
            "1,3,4",
            "--prompt-len",
            "6",
            "--max-new-tokens",
            "3",
            "--json",
            "--plot",
            str(plot),
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and len(rows) == 6
    good = [r for r in rows if r["fits"]]
    assert {(r["device"], r["tp"]) for r in good} == {("tiny", 1), ("tiny", 3), ("trn1", 1), ("trn1", 3)}
    for r in good:
        assert r["ttft_s"] > 0 and r["tpot_s"] > 0 and r["memory_per_core_bytes"] > 0
        simulated = r["ttft_s"] + 2 * r["tpot_s"]  # prefill, then 2 decode steps for 3 new tokens
        assert r["tokens_per_s"] == pytest.approx(3 / simulated)
    bad = [r for r in rows if not r["fits"]]
    assert all("ShardingError" in r["reason"] and "4 cores" in r["reason"] for r in bad)
    assert all("`" not in r["reason"] and "_" not in r["reason"] for r in bad), "Python words reached the command line"
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_sweep_pads_heads_when_asked_so_that_every_degree_runs(capsys, tiny_model):
    """Its rows' reasons said "or pad heads (--pad-heads)", an option sweep did not have."""
    import tilesim

    folder = str(tiny_model("gpt2"))
    args = ["sweep", folder, "--device", "tiny", "--tp", "1,4", "--prompt-len", "6", "--max-new-tokens", "3", "--json"]
    assert main([*args, "--pad-heads"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["fits"] for r in rows] == [True, True]
    from tilesim.api import open_source
    from tilesim.runtime.timing import context_for

    context = context_for(open_source(folder).graph, 6 + 3)  # as sweep sizes a point's KV cache
    alone = tilesim.load(folder, device=tilesim.Device("tiny", cores=4), tp=4, pad_heads=True, max_context=context)
    report = alone.generate([list(range(1, 7))], 3, eos_token_id=None).report
    assert rows[1]["ttft_s"] == report["ttft_s"] and rows[1]["tpot_s"] == report["itl_s"]


def test_sweep_timing_only_of_a_named_model(capsys):
    code = main(
        [
            "sweep",
            "llama-2-13b",
            "--timing-only",
            "--device",
            "trn1",
            "--tp",
            "8,20",
            "--prompt-len",
            "128",
            "--max-new-tokens",
            "4",
            "--json",
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["fits"] for r in rows] == [True, True], rows
    assert rows[1]["memory_per_core_bytes"] < rows[0]["memory_per_core_bytes"]


def test_sweep_names_the_activations_after_a_colon(capsys):
    args = ["sweep", "llama-2-7b", "--timing-only", "--device", "trn1", "--tp", "8", "--dtype", "int4,int4:int8"]
    code = main([*args, "--prompt-len", "256", "--max-new-tokens", "2", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["dtype"] for r in rows] == ["int4", "int4:int8"], rows
    fp32_act, int8_act = rows
    assert int8_act["memory_per_core_bytes"] == fp32_act["memory_per_core_bytes"]  # same weights, fp32 held
    assert int8_act["ttft_s"] < 0.8 * fp32_act["ttft_s"]  # a 256-token prefill's products run at the int8 peak
