"""`tilesim generate` / `tilesim profile` on tiny checkpoints: output, JSON, one-line errors."""

import json
import subprocess
import sys

import pytest

from tilesim.cli.main import main


def run_json(capsys, *args):
    code = main(["generate", *args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else captured.err


def test_json_has_outputs_report_and_wall_time(capsys, tiny_model):
    folder = str(tiny_model("llama"))
    code, out = run_json(
        capsys,
        folder,
        "--device",
        "tiny",
        "--tp",
        "3",
        "--prompt-ids",
        "5,6,7,8",
        "--prompt-ids",
        "9,10",
        "--max-new-tokens",
        "5",
    )
    assert code == 0
    assert [o["prompt_tokens"] for o in out["outputs"]] == [[5, 6, 7, 8], [9, 10]]
    assert all(1 <= len(o["tokens"]) <= 5 and "text" in o for o in out["outputs"])
    report = out["report"]
    assert report["ttft_s"] > 0 and report["itl_s"] > 0
    new_tokens = sum(len(o["tokens"]) for o in out["outputs"])
    # simulated throughput: the batch's new tokens over the simulated time of all steps
    assert report["sim_tokens_per_s"] == pytest.approx(new_tokens / report["sim_total_s"])
    assert len(report["memory"]["per_core_peak_bytes"]) == 3 and report["memory"]["max_tile_bytes"] > 0
    assert {"load_s", "compile_s", "decode_tokens_per_s"} <= set(out["wall"])
    precision = report["precision"]
    assert precision["weights"]["mlp"]["formats"] == ["fp32"] and precision["bytes_saved"] == 0


def test_text_prompts_and_the_chat_template(capsys, tiny_model):
    folder = str(tiny_model("gpt2"))
    code, out = run_json(
        capsys, folder, "--device", "tiny", "--tp", "2", "--prompt", "w1 w2 w3", "--chat", "--max-new-tokens", "3"
    )
    assert code == 0
    # The tiny template wraps the message as "<s> w1 w2 w3 </s> w7" (ids 1, 4, 5, 6, 2, 10).
    assert out["outputs"][0]["prompt_tokens"] == [1, 4, 5, 6, 2, 10]
    assert isinstance(out["outputs"][0]["text"], str)


def test_text_streams_and_the_report_prints(capsys, tiny_model):
    code = main(
        [
            "profile",
            str(tiny_model("opt")),
            "--device",
            "tiny",
            "--tp",
            "3",
            "--prompt",
            "w5 w6",
            "--max-new-tokens",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "simulated time to first token" in out and "memory per core" in out and "critical path" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tp", "4", "--device", "tiny"], "cannot be split over 4 cores; use a tensor-parallel degree of 1, 3, 6"),
        (["--tp", "1", "--device", "tiny", "--cores", "1", "--max-context", "256"], None),
        (["--device", "warp-drive"], "unknown device preset 'warp-drive'"),
        (["--tp", "1", "--device", "tiny", "--max-context", "0"], "--max-context 0 must be at least 1"),
    ],
)
def test_errors_are_one_line_without_a_traceback(capsys, tiny_model, args, message):
    code = main(["generate", str(tiny_model("llama")), "--prompt-ids", "1,2,3", "--max-new-tokens", "2", *args])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
        return
    assert code == 2
    assert err.startswith("tilesim: error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_model_too_big_for_the_device_and_a_missing_model_are_one_line(capsys):
    code = main(["generate", "llama-2-70b", "--timing-only", "--device", "tiny", "--tp", "4", "--prompt-len", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit on 4 core(s) of tiny: core 0 needs" in err and err.count("\n") == 1
    code = main(["generate", "/no/such/model", "--device", "tiny", "--prompt-ids", "1,2"])
    assert code == 2 and "no such file or folder" in capsys.readouterr().err


def test_the_installed_command_runs():
    exe = [sys.executable, "-m", "tilesim.cli.main"]
    done = subprocess.run([*exe, "devices", "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and json.loads(done.stdout)
    bad = subprocess.run(
        [*exe, "generate", "/no/such", "--prompt-ids", "1"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_named_config_needs_timing_only(capsys):
    assert main(["generate", "llama-2-13b", "--prompt-len", "4"]) == 2
    assert "named config without weights: run it with --timing-only" in capsys.readouterr().err


def test_python_is_told_its_arguments_and_the_command_line_its_flags(capsys, tiny_model):
    import tilesim
    from tilesim.errors import ConfigError

    folder = str(tiny_model("gpt2"))  # learned positions: its context cannot grow
    with pytest.raises(ConfigError) as python:
        tilesim.load(folder, device="tiny", tp=1, max_context=100000)
    assert "max_context=100000 is out of range" in str(python.value) and "--" not in str(python.value)
    code = main(["generate", folder, "--prompt-ids", "1,2", "--device", "tiny", "--tp", "1", "--max-context", "100000"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-context 100000 is out of range" in err and "max_context" not in err


def test_a_run_without_bf16_or_fp8_does_not_import_ml_dtypes():
    """ml_dtypes takes about 0.6 s to import; only runs that use its types may pay it (startup.py)."""
    import subprocess
    import sys

    code = (
        "import sys\nimport tilesim\n"
        "m = tilesim.load('smollm2', device='trn1', tp=1)\n"
        "m.generate([[1, 2, 3]], max_new_tokens=2)\n"
        "print('ml_dtypes' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_pipeline_stages_from_the_command_line_give_the_tokens_of_tp_alone(capsys, tiny_model):
    folder = str(tiny_model("llama_deep"))
    common = ["--device", "tiny", "--prompt-ids", "5,6,7,8", "--max-new-tokens", "6"]
    code, alone = run_json(capsys, folder, "--tp", "2", *common)
    assert code == 0
    code, staged = run_json(capsys, folder, "--tp", "2", "--layers-per-stage", "2,3", "--micro-batches", "2", *common)
    assert code == 0
    assert [o["tokens"] for o in staged["outputs"]] == [o["tokens"] for o in alone["outputs"]]
    assert staged["report"]["pipeline"]["layers_per_stage"] == [2, 3]
    assert len(staged["report"]["memory"]["per_core_peak_bytes"]) == 4  # 2 stages x 2 cores


def test_a_pipeline_that_does_not_divide_the_layers_says_so_in_flags(capsys, tiny_model):
    code = main(["generate", str(tiny_model("llama_deep")), "--device", "tiny", "--pp", "2", "--prompt-ids", "5,6"])
    err = capsys.readouterr().err
    assert code != 0 and "do not split evenly over --pp 2" in err and "--layers-per-stage" in err
    assert "Traceback" not in err


def test_the_report_says_up_to_how_many_rows_a_step_reads_its_activations_from_tile_memory(capsys):
    """Llama-2-70b on a NeuronCore: 24 MiB of SBUF over 8192 bf16 features a row."""
    args = ["generate", "llama-2-70b", "--timing-only", "--device", "trn1.32xlarge", "--tp", "32"]
    assert main([*args, "--prompt-len", "8", "--max-new-tokens", "1", "--dtype", "bf16"]) == 0
    rows = 24 * 2**20 // (8192 * 2)
    line = f"timing: steps of up to {rows} token rows read their activations from tile memory"
    assert line in capsys.readouterr().out
    assert main([*args, "--prompt-len", "8", "--max-new-tokens", "1", "--dtype", "bf16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["staged_rows"] == rows


def test_the_report_tells_the_memory_layout_of_the_largest_step_from_the_timings_staging(capsys):
    """A 1024-token prefill of Llama-2-70b: its hidden states (16 MiB) fit in a NeuronCore's
    24 MiB of SBUF, so the timing stages them; every value the step holds live does not, so
    the memory plan lays its activations out off-chip. The report says which is which."""
    args = ["generate", "llama-2-70b", "--timing-only", "--device", "trn1.32xlarge", "--tp", "32", "--dtype", "bf16"]
    assert main([*args, "--prompt-len", "1024", "--max-new-tokens", "1", "--report"]) == 0
    out = capsys.readouterr().out
    note = next(line for line in out.splitlines() if line.startswith("note: the largest step's activations"))
    assert "do not fit in tile memory: laid out off-chip" in note and "hidden states on chip while they fit" in note
    assert "timing: steps of up to 1536 token rows read their activations from tile memory" in out


def test_the_per_core_tables_give_cores_alike_one_row(capsys):
    """Two pipeline stages of 2 cores each, 12 and 20 layers: the decode step's per-core table
    has one row per stage ("0-1", "2-3"), as the JSON's decode_cores say, not one per core."""
    import json

    args = ["profile", "llama-2-7b", "--device", "trn1", "--tp", "2", "--pp", "2", "--layers-per-stage", "12,20",
            "--timing-only", "--prompt-len", "64", "--max-new-tokens", "4"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    cores = json.loads(capsys.readouterr().out)["report"]["decode_cores"]
    assert len(cores) == 4 and cores[0] == cores[1] != cores[2] == cores[3]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = out.split("one decode step per core\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert [line.split()[0] for line in table] == ["0-1", "2-3"]
    memory = out.split("memory per core\n", 1)[1].split("\n")[2:]
    assert memory[0].startswith("0-1 ") and memory[1].startswith("2-3 ")
