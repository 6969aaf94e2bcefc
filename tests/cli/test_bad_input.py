"""Bad input, table-driven: every case gets one clear line (the command line: exit status 2,
flags named, no traceback; Python: a TilesimError subclass naming its arguments), and a
hypothesis test that random argument values never end in a traceback."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tilesim
from tilesim.cli.main import main
from tilesim.errors import CheckpointError, ConfigError, GenerationError, ShardingError, UnknownPreset

# (arguments after the model, a phrase of the one-line error)
GENERATE = [
    (["--temperature", "nan"], "--temperature nan must be a finite number"),
    (["--temperature", "-1"], "--temperature -1.0 must be a finite number >= 0"),
    (["--seed", "-1"], "--seed -1 must be at least 0"),
    (["--top-k", "0"], "--top-k 0 must be at least 1"),
    (["--top-p", "1.5"], "--top-p 1.5 must be a finite number in (0, 1]"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0 must be at least 1"),
    (["--tp", "0"], "--tp 0 must be at least 1"),
    (["--cores", "0"], "must be at least 1"),
    (["--max-context", "0"], "--max-context 0 must be at least 1"),
    (["--device", "warp-drive"], "unknown device preset 'warp-drive'"),
    (["--dtype", "int3"], "--dtype int3 is not supported"),
    (["--kv-dtype", "int2"], "--kv-dtype int2 is not supported"),
    (["--act-dtype", "int8"], "--act-dtype int8 multiplies int8 activations"),
    (["--algo", "bogus"], "--algo bogus is not an all-reduce algorithm"),
    (["--tp", "4", "--device", "tiny"], "cannot be split over 4 cores"),
    (["--tp", "9", "--device", "trn1", "--cores", "3"], "--tp 9 needs 9 cores but the device has 3; give it --cores 9"),
    (["--trace", "/proc/tilesim/t.json"], "--trace /proc/tilesim/t.json: cannot write there"),
    (["--trace", "/tmp"], "--trace /tmp: is a folder; give a file name"),
    (["--plots", "/etc/hostname"], "--plots /etc/hostname: is a file; give a folder"),
    (["--trace", ""], "--trace '': give a path"),
    (["--plots", " "], "--plots ' ': give a path"),
    (["--prompt-len", "4"], "--prompt-len is for --timing-only runs"),
    # options that mean something only beside another: refused alone, not ignored
    (["--micro-batches", "2"], "--micro-batches is for pipelined runs (--pp or --layers-per-stage)"),
    (["--cores-per-actor", "2"], "--cores-per-actor is for runs on Ray actors (--ray)"),
    (["--actor-memory", "1GiB"], "--actor-memory is for runs on Ray actors (--ray)"),
    (["--speculate", "3"], "--speculate is for speculative decoding (--draft)"),
    (["--draft-tp", "2"], "--draft-tp is for speculative decoding (--draft)"),
    (["--moe-imbalance", "2"], "--moe-imbalance is for --timing-only runs"),
    (["--chat"], "--chat is for --prompt text"),
    (["--moe", "ep"], "--moe ep places whole experts on cores, but {llama} has no experts"),
    (["--prompt-ids", "1,,2"], "--prompt-ids '1,,2': give comma-separated integers"),
    (["--trace", "out", "--plots", "out"], "--trace and --plots both name"),
    (["--draft", "{llama}", "--speculate", "0"], "--speculate 0 must be at least 1"),
    (["--draft", "{llama}", "--draft-tp", "0"], "--draft-tp 0 must be at least 1"),
    # counts past any run: numpy's OverflowError, or minutes building the prompt, before
    (["--batch", "99999999999999999999"], "--batch 99999999999999999999 must be at most 16777216"),
    (["--max-new-tokens", "99999999999999999999"], "--max-new-tokens 99999999999999999999 must be at most"),
    (["--max-context", "99999999999999999999"], "--max-context 99999999999999999999 must be at most"),
    # empty values were taken as not given
    (["--dtype", ""], "--dtype '' is not supported"),
    (["--kv-dtype", ""], "--kv-dtype '' is not supported"),
    (["--draft", ""], "--draft '': give the draft model"),
    (["--prefill-buckets", "128,,512"], "--prefill-buckets '128,,512': give comma-separated token counts"),
    # Python's names reached the command line
    (["--layers-per-stage", "2", "--pp", "2"], "--pp 2 but --layers-per-stage 2 lists 1 stage; give one of them"),
    (["--ray", "auto", "--actor-memory", "1XB"], "--actor-memory 1XB: unit 'XB' is not a bytes unit"),
    (["--ray", "auto", "--actor-memory", "1e999"], "--actor-memory 1e999 must be a positive size"),  # OverflowError
    (["--ray", "auto", "--cores-per-actor", "0"], "--cores-per-actor 0 must be a whole number of at least 1"),
    (["--ray", "auto", "--timing-only", "--prompt-len", "4"], "--ray is for runs with weights: a --timing-only run"),
]


@pytest.mark.parametrize(("args", "phrase"), GENERATE)
def test_generate_gets_one_line_for_each_mistake(capsys, tiny_model, args, phrase):
    folder = str(tiny_model("llama"))
    capsys.readouterr()  # what making the tiny model printed
    code = main(
        ["generate", folder, "--prompt-ids", "1,2", "--max-new-tokens", "2", *(a.format(llama=folder) for a in args)]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tilesim: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert phrase.format(llama=folder) in err, err
    assert "_" not in err.split("error: ", 1)[1].split(" ")[0], "a Python argument name reached the command line"


@pytest.mark.parametrize("command", ["generate", "profile"])
@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--temperature", "nan"], "--temperature nan must be"),
        (["--top-k", "0"], "--top-k 0 must be"),
        (["--top-p", "1.5"], "--top-p 1.5 must be"),
        (["--seed", "-1"], "--seed -1 must be"),
        (["--prompt-ids", "5000"], "token id 5000 is outside the vocabulary of"),
        (["--max-context", "4"], "a prompt of 2 tokens plus 3 new ones needs 5 positions, but the model was compiled "
         "for --max-context 4"),
        (["--max-context", "2", "--max-new-tokens", "1"], "a prompt of 2 tokens plus 1 new one needs 3 positions"),
        # the draft's mistakes waited for the target's load too
        (["--draft", "{llama}", "--speculate", "0"], "--speculate 0 must be at least 1"),
        (["--draft", "{llama}", "--draft-tp", "0"], "--draft-tp 0 must be at least 1"),
        (["--draft", "{llama}", "--prompt-ids", "3"], "--draft runs one prompt"),
        (["--draft", "{llama_gguf}"], "the draft's vocabulary (128 ids) is not the target's (101)"),
        (["--draft", "/nonexistent/draft"], "/nonexistent/draft: no such file or folder"),
    ],
)  # fmt: skip
def test_a_mistake_in_the_request_is_refused_before_the_model_loads(capsys, monkeypatch, tiny_model, command, args,
                                                                    phrase):  # fmt: skip
    """A model's load (weights, kernels compiled) can take minutes; a mistyped sampling
    option, a token id past the vocabulary, a context too small for the request or a draft
    that cannot serve the model waited for it and were refused only when the run began."""
    import tilesim.cli.generate
    import tilesim.cli.speculate

    folders = {name: str(tiny_model(name)) for name in ("llama", "llama_gguf")}
    capsys.readouterr()

    def load(*args, **kwargs):
        pytest.fail("the model loaded before the mistake was refused")  # a BaseException: main does not catch it

    monkeypatch.setattr(tilesim.cli.generate, "load", load)
    monkeypatch.setattr(tilesim.cli.speculate, "load", load)
    args = [a.format(**folders) for a in args]
    code = main([command, folders["llama"], "--prompt-ids", "1,2", "--max-new-tokens", "3", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tilesim: error: ") and err.count("\n") == 1 and phrase in err, err


OTHERS = [
    (["collectives", "--device", "ipu-gc200", "--cores", "1000"], "--cores 1000: ipu-gc200 has at most 256 cores"),
    # the preset's most cores, in the words of the options that asked for more
    (
        ["generate", "llama-2-70b", "--timing-only", "--prompt-len", "4", "--tp", "32", "--pp", "2"],
        "--tp 32 with --pp 2 needs 64 cores, but trn1 has at most 32",
    ),
    (
        ["generate", "llama-2-70b", "--timing-only", "--prompt-len", "4", "--tp", "32", "--layers-per-stage", "40,40"],
        "--tp 32 with --layers-per-stage 40,40 needs 64 cores, but trn1 has at most 32",
    ),
    (
        ["generate", "llama-2-70b", "--timing-only", "--prompt-len", "4", "--tp", "8", "--cores", "64"],
        "--cores 64: trn1 has at most 32 cores",
    ),
    (["serve-sim", "llama-2-7b", "--tp", "64"], "--tp 64 needs 64 cores, but trn1 has at most 32"),
    (
        ["generate", "{llama}", "--prompt-ids", "1", "--draft", "{llama}", "--draft-tp", "99"],
        "--draft-tp 99 needs 99 cores, but trn1 has at most 32",
    ),
    (["collectives", "--bytes", "1T", "--cores", "2"], "ring allreduce of 1 TiB on each of 2 cores needs about"),
    (["collectives", "--fault", "dead=2-9", "--cores", "4"], "no link 2-9 on the 4 cores of trn1"),
    (["collectives", "--fault", "dead=0-1", "--cores", "1"], "no link 0-1 on the 1 cores of trn1 (ring); one core has"),
    (["collectives", "--fault", "dead=0-1", "--device", "a100"], "links are e.g. switch-0, switch-1"),  # were -1-0
    (["collectives", "--fabric", "analytic", "--fault", "corrupt=0.1"], "use --fabric des with them"),
    (["collectives", "--plot", "/proc/tilesim/bw.png"], "--plot /proc/tilesim/bw.png: cannot write there"),
    (["sweep", "{llama}", "--device", "trn1,foo"], "--device 'foo': unknown device preset"),
    (["sweep", "{llama}", "--dtype", "fp16,bogus"], "unknown weight dtype 'bogus'"),
    (["sweep", "{llama}", "--dtype", "int4:int3"], "unknown activation dtype 'int3'"),
    (["sweep", "{llama}", "--dtype", "int8:"], "--dtype 'int8:': name the activation dtype after ':'"),
    (["sweep", "{llama}", "--dtype", ","], "--device, --tp and --dtype (when given) each need at least one value"),
    (["sweep", "{llama}", "--dtype", ""], "--device, --tp and --dtype (when given) each need at least one value"),
    (["sweep", "{llama}", "--device", " ,"], "--device, --tp and --dtype (when given) each need at least one value"),
    (["sweep", "{llama}", "--prompt-len", "0"], "--prompt-len 0 must be at least 1"),
    (["sweep", "{llama}", "--tp", "0"], "--tp 0: a tensor-parallel degree is at least 1"),
    (["sweep", "{llama}", "--plot", "/proc/tilesim/s.png"], "--plot /proc/tilesim/s.png: cannot write there"),
    (["sweep", "{llama}", "--plot", ""], "--plot '': give a path"),
    (["collectives", "--plot", "", "--cores", "2"], "--plot '': give a path"),
    (["fidelity", "--device", "a100", "--plot", ""], "--plot '': give a path"),
    (["fidelity", "--device", "a100", "--jobs", "0"], "--jobs 0 must be at least 1 and at most 256"),
    (["fidelity", "--device", "a100", "--jobs", "1000"], "--jobs 1000 must be at least 1 and at most 256"),
    (["fidelity", "--device", "a100", "--plot", "out.txt"], "--plot out.txt: cannot draw a .txt file; end the name"),
    (["sweep", "{llama}", "--plot", "s.gif"], "--plot s.gif: cannot draw a .gif file"),
    (["collectives", "--cores", "2", "--plot", "c.csv"], "--plot c.csv: cannot draw a .csv file"),
    (["serve-sim", "{llama}", "--trace", ""], "--trace '': give a path"),
    (["collectives", "--cores", "0"], "--cores 0 must be at least 1"),
    (["collectives", "--bytes", "0"], "--bytes 0: 0 B is less than one fp32 element (4 bytes)"),
    (["collectives", "--bytes", "3", "--dtype", "fp32"], "--bytes 3: 3 B is less than one fp32 element"),
    (["collectives", "--bytes", "1:1K", "--dtype", "bf16"], "--bytes 1:1K: 1 B is less than one bf16 element"),
    # checked before the model loads: a tiny model's drawn requests pass its trained positions, and
    # the warning about that must not come before the error
    (["serve-sim", "{llama}", "--max-num-seqs", "0"], "--max-num-seqs 0 must be at least 1"),
    (
        ["serve-sim", "{llama}", "--scheduler", "chunked", "--chunk-size", "0"],
        "--chunk-size 0 must be at least 1",
    ),
    # a --fault spec's messages quote its own syntax (seed=N), not flags
    (["collectives", "--cores", "4", "--fault", "corrupt=0.5,seed=x"], "cannot read fault 'seed=x'"),
    (["collectives", "--cores", "4", "--fault", "bogus=1"], "slow=[A-B:]F, seed=N, retries=N"),
    (["collectives", "--cores", "4", "--fault", "slow=0.5"], "fault slow=0.5 on every link: the slow-down factor"),
    (["collectives", "--cores", "4", "--fault", ""], "fault '' injects nothing; give at least one of drop=P"),
    (["collectives", "--cores", "4", "--fault", "seed=3,retries=2"], "fault 'seed=3,retries=2' injects nothing"),
    (["sweep", "{llama}", "--device", "tiny", "--tp", "1,3,1"], "--tp names 1 twice: give each value once"),
    (["sweep", "{llama}", "--device", "tiny,trn1,tiny"], "--device names tiny twice"),
    (["collectives", "--device", "{llama}/config.json"], "config.json: unknown field 'architectures'"),
    (["sweep", "{llama}", "--max-context", "16", "--prompt-len", "64"], "--max-context 16 holds fewer positions"),
    (["sweep", "{llama}", "--max-num-seqs", "4"], "--max-num-seqs is for --slo"),
    (["sweep", "{llama}", "--prompt-len", "99999999999999999999"], "--prompt-len 99999999999999999999 must be at most"),
    (["sweep", "{llama}", "--tp", "1,,2"], "--tp '1,,2': give comma-separated integers"),
    (["sweep", "{llama}", "--slo", ""], "SLO '' names no bound"),
    (["serve-sim", "{llama}", "--slo", ""], "SLO '' names no bound"),
    (["serve-sim", "{llama}", "--workload", ""], "workload '': give the path of a JSONL or CSV file"),
    (["serve-sim", "{llama}", "--max-num-seqs", "99999999999999999999"], "--max-num-seqs 99999999999999999999 must be"),
    (["generate", "{llama}", "--timing-only", "--prompt-len", "99999999999999999999"], "--prompt-len 9999999999999"),
    (["generate", "", "--prompt-ids", "1"], "model '': give a folder, a .gguf file or a short name"),
    (["serve-sim", "{llama}", "--dtype", ""], "--dtype '' is not supported"),
    (["serve-sim", "{llama}", "--slo", "ttft_p99=1", "--ray", ""], "--ray '': give a cluster's HOST:PORT"),
    (["sweep", "{llama}", "--ray", ""], "--ray '': give a cluster's HOST:PORT"),
    (["generate", "{llama}", "--prompt-ids", "1", "--ray", ""], "--ray '': give a cluster's HOST:PORT"),
    (["sweep", "{llama}", "--slo", "ttft_p99=1", "--prompt-dist", ""], "prompt '': give fixed:N"),
    # tracebacks (ZeroDivisionError, OverflowError) or a run without end before
    (["serve-sim", "llama-2-7b", "--arrivals", "gamma", "--cv", "1e-300"], "--cv 1e-300 must be a coefficient of"),
    (["serve-sim", "llama-2-7b", "--arrivals", "gamma", "--cv", "1e300"], "from 1e-06 (nearly periodic arrivals) to"),
    (["serve-sim", "llama-2-7b", "--slo", "ttft_p90=1", "--probes", "99999999"], "--probes 99999999 must be a whole"),
    (["collectives", "--cores", "4", "--fault", "corrupt=1,retries=99999999"], "from 0 to 100"),
    # argparse took a value that begins with a dash and a digit for an option: "expected one argument"
    (["collectives", "--cores", "2", "--bytes", "-1K"], "cannot read '-1K' as a size"),
    # options of one operation or dtype, taken and ignored by the others
    (["collectives", "--root", "1"], "--root is for --op broadcast"),
    (["collectives", "--op", "allgather", "--reduce", "max"], "--reduce is for reducing operations"),
    (["collectives", "--accumulate", "fp32"], "--accumulate is for reductions of 16-bit data"),
    (
        ["collectives", "--op", "allgather", "--dtype", "bf16", "--accumulate", "fp32"],
        "--accumulate is for reductions of 16-bit data",
    ),
    (["generate", "{llama}", "--prompt-ids", "-1,2"], "token id -1 is outside the vocabulary"),
    (
        ["sweep", "{llama}", "--slo", "ttft_p99=1", "--chunk-size", "8"],
        "--chunk-size is for --slo with --scheduler chunked",
    ),
    # one new token has no time per token: a traceback from the plot, a search with no answer
    (["sweep", "{llama}", "--max-new-tokens", "1", "--plot", "p.png"], "--max-new-tokens 1 makes one token"),
    (["sweep", "{llama}", "--max-new-tokens", "1", "--slo", "tpot_p99=1"], "tpot_p99: no request of the workload"),
    (
        ["serve-sim", "{llama}", "--prompt-len", "fixed:8", "--output-len", "fixed:1", "--slo", "tpot_p99=1"],
        "tpot_p99: no request of the workload",
    ),
]


@pytest.mark.parametrize(("args", "phrase"), OTHERS)
def test_the_other_commands_get_one_line_for_each_mistake(capsys, tiny_model, args, phrase):
    folder = str(tiny_model("llama"))
    capsys.readouterr()
    code = main([a.format(llama=folder) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tilesim: error: ") and err.count("\n") == 1 and phrase in err, err


def test_a_context_beyond_the_positions_is_refused_for_learned_positions_and_warned_for_rotary(capsys, tiny_model):
    learned, rotary = str(tiny_model("gpt2")), str(tiny_model("llama"))
    capsys.readouterr()
    code = main(["generate", learned, "--prompt-ids", "1,2", "--max-new-tokens", "1", "--max-context", "512"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-context 512 is out of range" in err and "256 learned positions" in err
    with pytest.warns(UserWarning, match="max_context=512 is beyond the 256 positions"):
        model = tilesim.load(rotary, device="tiny", tp=1, max_context=512)
    out = model.generate([list(range(1, 100))] * 1, max_new_tokens=300, eos_token_id=None)
    assert len(out.tokens[0]) == 300  # positions 256..398 run: rotary tables cover the whole context
    assert any("a KV cache of 512 positions is beyond the 256 positions" in n for n in out.report["memory"]["notes"])


def test_the_command_line_prints_a_warning_as_one_line_in_its_own_words(tiny_model):
    args = [str(tiny_model("llama")), "--prompt-ids", "1,2", "--max-new-tokens", "1", "--max-context", "512"]
    run = subprocess.run(
        [sys.executable, "-m", "tilesim.cli.main", "generate", *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if "warning" in line.lower()]
    assert warned == [
        f"tilesim: warning: --max-context 512 is beyond the 256 positions {args[0]} was trained for (rotary positions "
        "and ALiBi biases extend; quality there is not known)"
    ], run.stderr


def test_a_context_the_command_chose_is_warned_about_in_what_needs_it(tmp_path, tiny_model):
    """Without --max-context the command picks the context (a bucket of the positions its
    requests need), so a warning names what needs the positions, not a --max-context never
    given; and a bucket rounded up past the trained positions, unused, is no cause for one."""
    config = json.loads((tiny_model("llama") / "config.json").read_text())
    trained_300 = tmp_path / "llama300"
    trained_300.mkdir()
    (trained_300 / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 300}))

    def warnings_of(*args: str) -> list[str]:
        command = [sys.executable, "-m", "tilesim.cli.main", *args, "--timing-only", "--device", "tiny"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return [line for line in run.stderr.splitlines() if "warning" in line.lower()]

    llama = str(tiny_model("llama"))
    beyond = f"beyond the 256 positions {llama} was trained for (rotary positions and ALiBi biases extend"
    assert warnings_of("generate", llama, "--prompt-len", "300", "--max-new-tokens", "2") == [
        f"tilesim: warning: the prompt and new tokens need 302 positions, {beyond}; quality there is not known)"
    ]
    assert warnings_of("generate", str(trained_300), "--prompt-len", "280", "--max-new-tokens", "2") == []
    served = warnings_of("serve-sim", llama, "--requests", "3", "--prompt-len", "fixed:250", "--output-len", "fixed:9")
    assert served == [
        f"tilesim: warning: the longest request's prompt and output need 259 positions, {beyond}; quality there "
        "is not known)"
    ]


def test_a_drafts_context_is_its_own(capsys, tiny_model):
    """The draft gets the positions the run needs within its own limit (gpt2: 256 learned),
    not the target's bucket; beyond its limit the error names the draft, not a --max-context
    that was never given (it said '--max-context 512 is out of range' before)."""
    llama, gpt2 = str(tiny_model("llama")), str(tiny_model("gpt2"))
    capsys.readouterr()
    run = ["generate", llama, "--prompt-ids", "1,2", "--draft", gpt2, "--device", "tiny"]
    assert main([*run, "--max-new-tokens", "300"]) == 2
    err = capsys.readouterr().err
    assert f"the draft {gpt2}: the prompt and new tokens need 302 positions; the model has 256" in err
    assert main([*run, "--max-new-tokens", "250"]) == 0  # 252 positions: within both


def test_requests_longer_than_learned_positions_are_refused_in_the_words_of_what_needs_them(capsys, tiny_model):
    """serve-sim and sweep chose the context from their requests: the error says which (it
    spoke of a prompt and new tokens, which serve-sim has not)."""
    gpt2 = str(tiny_model("gpt2"))
    capsys.readouterr()
    drawn = ["--requests", "2", "--prompt-len", "fixed:200", "--output-len", "fixed:100"]
    assert main(["serve-sim", gpt2, "--device", "tiny", *drawn]) == 2
    err = capsys.readouterr().err
    assert "the longest request's prompt and output need 300 positions; the model has 256" in err, err


def test_a_sweep_whose_every_point_fails_exits_non_zero(capsys, tiny_model, tmp_path):
    folder = str(tiny_model("llama"))
    capsys.readouterr()
    plot = tmp_path / "tp.png"
    code = main(["sweep", folder, "--device", "tiny", "--tp", "4,5", "--json", "--plot", str(plot)])
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert code == 1 and rows and not any(r["fits"] for r in rows)
    assert "no configuration of the sweep ran" in captured.err
    assert not plot.exists()  # an empty plot (written before, with a legend warning) would pass for a result


def test_a_failed_run_leaves_no_trace_or_plot_behind(capsys, tiny_model, tmp_path):
    trace, plots = tmp_path / "t.json", tmp_path / "plots"
    folder = str(tiny_model("llama"))
    code = main(["generate", folder, "--prompt-ids", "1,2", "--tp", "4", "--device", "tiny", "--trace", str(trace)])
    assert code == 2 and not trace.exists()
    unmade = tmp_path / "new" / "plots"
    code = main(["generate", folder, "--prompt-ids", "1,2", "--tp", "4", "--device", "tiny", "--plots", str(unmade)])
    assert code == 2 and not (tmp_path / "new").exists()  # the check made the folders before
    ok = main(["generate", folder, "--prompt-ids", "1,2", "--max-new-tokens", "2", "--trace", str(trace)])
    ok2 = main(["generate", folder, "--prompt-ids", "1,2", "--max-new-tokens", "2", "--plots", str(plots)])
    assert ok == ok2 == 0 and json.loads(trace.read_text())["traceEvents"]
    assert sorted(p.name for p in plots.iterdir()) == ["breakdown.png", "memory.png", "roofline.png", "timeline.png"]
    assert not list(tmp_path.glob(".*partial*")) and not list(plots.glob(".*"))


def test_traces_are_byte_identical_across_reruns(capsys, tiny_model, tmp_path):
    folder = str(tiny_model("llama"))
    for name in ("a.json", "b.json"):
        args = ["generate", folder, "--prompt-ids", "1,2,3", "--max-new-tokens", "3", "--trace", str(tmp_path / name)]
        assert main(args) == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


API_LOAD = [
    ({"path_or_name": None}, CheckpointError, "path_or_name=None must be"),
    ({"device": None}, ConfigError, "device=None must be a tilesim.Device or a preset name"),
    ({"tp": 0}, ShardingError, "tp=0 must be at least 1"),
    ({"tp": 2.5}, ShardingError, "tp=2.5 must be a whole number"),
    ({"batch": 0}, ConfigError, "batch=0 must be at least 1"),
    ({"batch": -1}, ConfigError, "batch=-1 must be at least 1"),
    ({"max_context": 0}, ConfigError, "max_context=0 must be at least 1"),
    ({"batch": 10**20}, ConfigError, "batch=100000000000000000000 must be at most 16777216"),
    ({"max_context": 2**24 + 1}, ConfigError, "max_context=16777217 must be at most 16777216"),
    ({"dtype": ""}, ConfigError, "dtype='' is not supported"),
    ({"kv_dtype": ""}, ConfigError, "kv_dtype='' is not supported"),
    ({"path_or_name": ""}, CheckpointError, "model '': give a folder, a .gguf file or a short name"),
    ({"algo": "bogus"}, ConfigError, "algo='bogus' is not an all-reduce algorithm"),
    ({"dtype": "int3"}, ConfigError, "dtype='int3' is not supported"),
    ({"device": "warp-drive"}, UnknownPreset, "unknown device preset 'warp-drive'"),
    ({"path_or_name": "/no/such/model"}, CheckpointError, "no such file or folder"),
    ({"timing_only": "no"}, ConfigError, "timing_only='no' must be True or False"),
    ({"pad_heads": "yes"}, ConfigError, "pad_heads='yes' must be True or False"),
    ({"progress": 5}, ConfigError, "progress=5 must be a function"),
    # the wrong number of parameters was a TypeError from inside the load, at the first call
    ({"progress": lambda done: None}, ConfigError, "is called with 2 arguments (done, total), which it does not take"),
    ({"layers_per_stage": [1, "a"]}, ShardingError, "every stage needs a whole number of layers"),
    # ignored before: they would read as obeyed
    ({"cores_per_actor": 2}, ConfigError, "cores_per_actor=2 is for cores hosted on Ray actors; give `cluster` too"),
    ({"actor_memory": "1GiB"}, ConfigError, "actor_memory='1GiB' is for cores hosted on Ray actors"),
    ({"micro_batches": 2}, ConfigError, "micro_batches=2 cuts a batch for pipeline stages; give `pp` or"),
    ({"micro_batches": 2, "pp": 1}, ConfigError, "micro_batches=2 cuts a batch for pipeline stages"),
    ({"cluster": "local"}, ConfigError, "cluster='local': give a cluster's HOST:PORT"),  # it read --ray local
    ({"cluster": "auto", "timing_only": True}, ConfigError, "cluster='auto' hosts the cores' weights and arithmetic"),
]


def test_a_loaded_models_methods_name_the_argument_that_is_wrong(tiny_model):
    model = tilesim.load(str(tiny_model("llama")), device="tiny", tp=1)
    with pytest.raises(ConfigError, match="batch='2' must be a whole number"):
        model.session("2", False)
    with pytest.raises(ConfigError, match="prefill_batch=4 is more than the batch of 2"):
        model.session(2, False, prefill_batch=4)
    with pytest.raises(ConfigError, match=r"device=.trn1. must be a tilesim\.Device"):
        model.timer_for("trn1")
    with pytest.raises(ConfigError, match="override placement: expected a mapping"):
        tilesim.Device("tiny", placement="tiles")
    with pytest.raises(ConfigError, match="backed='no' must be True or False"):  # a string was taken as True
        tilesim.Device("tiny", backed="no")
    # a degree from numpy is a degree (load took np.int64 for max_context and batch, not for tp)
    assert tilesim.load(str(tiny_model("llama")), device="tiny", tp=np.int64(3)).tp == 3


@pytest.mark.parametrize(("change", "error", "phrase"), API_LOAD)
def test_load_names_the_argument_that_is_wrong(tiny_model, change, error, phrase):
    kwargs = {"path_or_name": str(tiny_model("llama")), "device": "tiny", "tp": 1, **change}
    with pytest.raises(error) as raised:
        tilesim.load(kwargs.pop("path_or_name"), **kwargs)
    assert phrase in str(raised.value) and "--" not in str(raised.value)


API_GENERATE = [
    ("hello", {}, "prompts must be a list of token-id lists"),
    ([1, 2, 3], {}, "wrap one prompt as [[1, ...]]"),
    ([[1, 2.5]], {}, "prompt 0 holds 2.5; token ids are whole numbers"),
    ([[1, 200]], {}, "token id 200 is outside the vocabulary of 101 ids"),
    ([[]], {}, "every prompt needs at least one token"),
    (np.array([[1.5, 2.0]]), {}, "a 1-D or 2-D integer array"),
    ([[1, 2]], {"max_new_tokens": "3"}, "max_new_tokens='3' must be a whole number"),
    ([[1, 2]], {"top_k": 2.5}, "top_k=2.5 must be a whole number"),
    ([[1, 2]], {"top_p": 0}, "top_p=0 must be a finite number in (0, 1]"),
    ([[1, 2]], {"temperature": float("inf")}, "temperature=inf must be a finite number"),
    ([[1, 2]], {"seed": -1}, "seed=-1 must be at least 0"),
    ([[1, 2]], {"max_new_tokens": 10**20}, "max_new_tokens=100000000000000000000 must be at most 16777216"),
    ([[1, 2]], {"eos_token_id": "x"}, "eos_token_id='x' must be a token id"),
    ([[1, 2]], {"eos_token_id": [2, -1]}, "eos_token_id -1 is outside the vocabulary of"),
    ([[1, 2]], {"eos_token_id": 10**6}, "eos_token_id 1000000 is outside the vocabulary of"),
    ([[1, 2]], {"return_logits": "yes"}, "return_logits='yes' must be False, True or 'all'"),
    ([list(range(1, 30))], {"max_new_tokens": 300}, "load it with a larger `max_context`"),
    ([[1, 2]], {"on_token": 5}, "on_token=5 must be a function"),
    ([[1, 2]], {"on_token": lambda token: None}, "is called with 2 arguments (prompt_index, token_id)"),
]


@pytest.mark.parametrize(("prompts", "kwargs", "phrase"), API_GENERATE)
def test_generate_names_the_argument_that_is_wrong(tiny_model, prompts, kwargs, phrase):
    model = tilesim.load(str(tiny_model("llama")), device="tiny", tp=1, max_context=256)
    with pytest.raises(GenerationError) as raised:
        model.generate(prompts, **kwargs)
    assert phrase in str(raised.value)


def test_run_collective_and_the_rate_search_name_the_argument_that_is_wrong():
    from tilesim.collectives import run_collective
    from tilesim.errors import WorkloadError
    from tilesim.serving import Request, max_rate, parse_slo

    two = tilesim.Device("tiny", cores=2)
    for kwargs, phrase in (
        ({"n": 4.5}, "n=4.5 must be a whole number"),  # ran before, its row saying n=4.5
        ({"n": 4, "root": 1.0}, "root=1.0 must be a whole number"),  # a TypeError before
        ({"n": 4, "device": None}, "device=None must be a tilesim.Device or a preset name"),
    ):
        with pytest.raises(ConfigError, match=re.escape(phrase)):
            run_collective("broadcast", None, **{"device": two, **kwargs})
    by_name = run_collective("allreduce", None, device="tiny", n=4)  # a preset name, as tilesim.load takes
    assert by_name.cores == tilesim.Device("tiny").num_cores
    slo = parse_slo("ttft_p90=1")
    with pytest.raises(WorkloadError, match=re.escape("unit_workload=[] must be a non-empty list")):
        max_rate(lambda w: {}, [], slo)
    with pytest.raises(WorkloadError, match=r"the run gave \{\}, not a serving summary .* with the SLO.s ttft_p90"):
        max_rate(lambda w: {}, [Request(0, 0.0, 4, 4)], slo)  # a KeyError before


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [({"start": "1"}, "starting rate must be positive, not '1'"), ({"start": math.inf}, "must be positive, not inf"),
     ({"tolerance": 0}, "tolerance=0 must be the bracket's relative width"), ({"tolerance": math.nan}, "tolerance=nan"),
     ({"steps": 10**9}, "steps=1000000000 must be at most 100"), ({"steps": 2.5}, "steps=2.5 must be a whole number"),
     ({"on_try": 5}, "on_try=5 must be a function of (rate, met), or None"),
     ({"evaluate": 5}, "evaluate=5 must be a function"),
     ({"on_try": lambda rate: None}, "is called with 2 arguments (rate, met)"),
     ({"run": lambda: {}}, "is called with one argument (workload)"),
     ({"evaluate": lambda rates: []}, "evaluate gave 0 summaries for 1 rates"), ({"run": None}, "run=None must be a"),
     ({"slo": "ttft_p90=1"}, "slo='ttft_p90=1' must map"), ({"slo": {("ttft", "p90"): -1.0}}, "must map (metric,"),
     ({"slo": {}}, "slo={} must map")],
)  # fmt: skip
def test_the_rate_search_names_each_argument_that_is_wrong(kwargs, phrase):
    """Each was a TypeError, ValueError or AttributeError, ran without end (a billion steps of a
    run that always meets its SLO), or (a tolerance of nan, a start of inf) searched anyway."""
    from tilesim.errors import WorkloadError
    from tilesim.serving import Request, max_rate, parse_slo

    met = {"ttft": {"p90": 0.1}}
    args = {"run": lambda workload: met, "unit_workload": [Request(0, 0.0, 4, 4)], "slo": parse_slo("ttft_p90=1")}
    args.update(kwargs)
    with pytest.raises(WorkloadError, match=re.escape(phrase)):
        max_rate(args.pop("run"), args.pop("unit_workload"), args.pop("slo"), **args)


def test_a_calibration_file_that_cannot_be_read_is_named_with_its_line(tmp_path):
    from tilesim import fidelity

    with pytest.raises(ConfigError, match=r"nope\.csv: cannot read the calibration file"):
        fidelity.load_latency_rows(tmp_path / "nope.csv")
    (tmp_path / "rows.csv").write_text("size_bytes,time_us\n1024,5\n2048,x\n")
    with pytest.raises(ConfigError, match=r"rows.csv, line 3: not a row of this calibration file \(could not"):
        fidelity.load_allreduce_rows(tmp_path / "rows.csv")  # a ValueError before
    with pytest.raises(ConfigError, match=r"line 2: .*no column or known name 'model'"):
        fidelity.load_latency_rows(tmp_path / "rows.csv")  # a KeyError before


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [({"inputs": 5}, "inputs=5 must be a list of 1-D arrays"), ({"n": 4}, "not both"),
     ({"in_place": "no"}, "in_place='no' must be True or False"), ({"timeout_s": 0}, "timeout_s=0 must be .* > 0"),
     ({"timeout_s": -1.0}, "timeout_s=-1.0"), ({"timeout_s": float("nan")}, "timeout_s=nan"),
     ({"timeout_s": "1"}, "timeout_s='1' must be a number"), ({"faults": "drop=0.1"}, "must be a FaultSpec"),
     ({"on_transfer": 5}, "on_transfer=5 must be a function"), ({"progress": 5}, "progress=5 must be a function"),
     ({"progress": lambda done: None}, r"progress=.* is called with 2 arguments")],
)  # fmt: skip
def test_run_collectives_options_of_the_wrong_kind_are_named(kwargs, phrase):
    """Each was a TypeError, AttributeError or simpy's ValueError, or ("no", nan) taken as given."""
    from tilesim.collectives import run_collective

    args = {"inputs": [np.ones(4, np.float32)] * 3, **kwargs}
    with pytest.raises(ConfigError, match=phrase):
        run_collective("allreduce", args.pop("inputs"), device=tilesim.Device("tiny", cores=3), **args)


VALUES = st.one_of(
    st.integers(-5, 300).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str), st.text(max_size=6)
)
FLAGS = ["--tp", "--cores", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed", "--max-context"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), min_size=1, max_size=3))
def test_random_argument_values_never_end_in_a_traceback(tiny_model, pairs):
    folder = str(tiny_model("llama"))
    args = ["generate", folder, "--prompt-ids", "1,2", "--max-new-tokens", "1", "--device", "tiny"]
    assert exit_code(args, pairs) in (0, 2)


def exit_code(args: list[str], pairs) -> int:
    """`tilesim` with `args` and each (flag, value) of `pairs`: its exit status (a traceback fails the test)."""
    for flag, value in pairs:
        args = [*args, flag, value]
    try:
        return main(args)
    except SystemExit as exit_:  # argparse's own refusal of a value that is not a number
        return exit_.code


SERVE_FLAGS = ["--rate", "--cv", "--seed", "--max-num-seqs", "--chunk-size", "--prompt-len", "--output-len", "--slo",
               "--probes", "--max-context"]  # fmt: skip
SERVE_VALUES = st.one_of(
    VALUES,
    st.sampled_from(["fixed:0", "zipf:nan,1,9", "uniform:9,3", "fixed:1e30", "ttft_p90=0", "tpot_p99=1,tpot_p99=2"]),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SERVE_FLAGS), SERVE_VALUES), min_size=1, max_size=3))
def test_random_serving_values_never_end_in_a_traceback_or_a_hang(pairs):
    # a drawn workload of 4 short requests, so that a run the values allow ends in moments
    args = ["serve-sim", "llama-2-7b", "--tp", "8", "--requests", "4", "--prompt-len", "fixed:16",
            "--output-len", "fixed:4", "--arrivals", "gamma", "--scheduler", "chunked"]  # fmt: skip
    assert exit_code(args, pairs) in (0, 1, 2)  # 1: no rate meets the SLO


def test_a_full_disk_or_a_closed_pipe_on_stdout_is_one_line_or_silence():
    import subprocess
    import sys

    exe = [sys.executable, "-m", "tilesim.cli.main", "devices"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(exe, stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert (
        done.returncode == 2 and done.stderr == "tilesim: error: cannot write the output: no space left on the device\n"
    )
    with subprocess.Popen(exe, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as closed:
        closed.stdout.close()  # the reader is gone before the first line
        assert closed.wait() == 0 and "Traceback" not in closed.stderr.read()


def test_a_plot_is_drawn_in_the_format_its_name_ends_in(capsys, tmp_path):
    """A PNG named out.jpg was a file its name lied about; a name without an ending is a PNG."""
    heads = {"f.svg": b"<?xml", "f.pdf": b"%PDF", "f.jpg": b"\xff\xd8\xff", "f": b"\x89PNG"}
    for name, head in heads.items():
        assert main(["fidelity", "--device", "a100", "--plot", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes().startswith(head), name
    capsys.readouterr()
