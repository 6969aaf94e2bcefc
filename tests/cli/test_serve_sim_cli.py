"""`tilesim serve-sim`: the percentiles, JSON, plots and request trace of a named model
(timing-only), real tokens of a checkpoint, the SLO search, and bad input as one line."""

import json

import pytest

from tilesim.cli.main import main
from tilesim.serving import parse_slo
from tilesim.serving.slo import max_rate

MODEL = ["llama-2-7b", "--device", "trn1", "--tp", "8"]
BASE = [*MODEL, "--requests", "60", "--prompt-len", "uniform:32,256", "--output-len", "uniform:8,64"]


def test_percentiles_plots_and_trace_of_a_named_model(tmp_path, capsys):
    trace = tmp_path / "requests.json"
    assert main(["serve-sim", *BASE, "--rate", "5", "--plots", str(tmp_path / "out"), "--trace", str(trace)]) == 0
    text = capsys.readouterr().out
    for phrase in ("time to first token", "time per output token", "queueing delay", "p99", "timing-only",
                   "60 requests over"):  # fmt: skip
        assert phrase in text
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"latency_cdf.png", "serving_timeline.png"}
    events = json.loads(trace.read_text())["traceEvents"]
    decode = [e for e in events if e.get("cat") == "decode"]
    assert len(decode) == 60 and all(e["dur"] > 0 for e in decode)
    assert {e["tid"] for e in decode} <= set(range(8))


def test_json_is_the_summary(capsys):
    assert main(["serve-sim", *BASE, "--rate", "5", "--scheduler", "chunked", "--chunk-size", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["summary"]
    assert out["requests"] == 60 and out["scheduler"] == "chunked" and out["chunk_size"] == 64
    assert out["ttft"]["p50"] <= out["ttft"]["p90"] <= out["ttft"]["p99"] <= out["ttft"]["max"]
    assert 0 < out["batch_mean"] <= 8


def test_a_checkpoint_serves_its_real_tokens(tiny_model, capsys):
    folder = str(tiny_model("llama"))
    args = ["serve-sim", folder, "--device", "tiny", "--tp", "3", "--requests", "6", "--rate", "1000000",
            "--prompt-len", "uniform:2,20", "--output-len", "fixed:5", "--max-num-seqs", "2", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["functional"] and len(out["tokens"]) == 6


def test_a_checkpoint_whose_heads_tp_does_not_divide_serves_with_padded_heads(tiny_model, capsys):
    """The refusal named --pad-heads, which serve-sim did not take."""
    folder = str(tiny_model("llama"))  # 6 query heads, 3 key/value heads
    args = ["serve-sim", folder, "--device", "tiny", "--requests", "4", "--rate", "1000000",
            "--prompt-len", "uniform:2,20", "--output-len", "fixed:5", "--max-num-seqs", "2", "--json"]  # fmt: skip
    assert main([*args, "--tp", "4"]) == 2
    assert "(--pad-heads)" in capsys.readouterr().err
    assert main([*args, "--tp", "4", "--pad-heads"]) == 0
    padded = json.loads(capsys.readouterr().out)
    assert main([*args, "--tp", "1"]) == 0
    assert padded["tokens"] == json.loads(capsys.readouterr().out)["tokens"] and padded["summary"]["functional"]


def test_a_model_too_big_names_serve_sims_own_flags(capsys):
    """The library's `batch` is serve-sim's --max-num-seqs (it named --batch, which serve-sim has not)."""
    assert main(["serve-sim", "qwen3-30b-a3b", "--device", "tiny", "--tp", "3", "--requests", "2"]) == 2
    err = capsys.readouterr().err
    assert "a smaller --max-context or --max-num-seqs" in err and "--batch" not in err


def test_sampling_uses_each_requests_own_seed(tiny_model, capsys):
    """--temperature/--top-k sample each request with its seed: the tokens it gets served alone."""
    import tilesim
    from tilesim.serving import serve, synthetic

    folder = str(tiny_model("llama"))
    args = ["serve-sim", folder, "--device", "tiny", "--requests", "4", "--rate", "1000000", "--prompt-len",
            "uniform:2,20", "--output-len", "fixed:12", "--max-num-seqs", "2", "--ignore-eos", "--json"]  # fmt: skip
    assert main([*args, "--temperature", "1.0", "--top-k", "20"]) == 0
    sampled = json.loads(capsys.readouterr().out)["tokens"]
    assert main(args) == 0
    greedy = json.loads(capsys.readouterr().out)["tokens"]
    assert sampled != greedy
    model = tilesim.load(folder, device=tilesim.Device("tiny"), tp=1, max_context=256)
    workload = synthetic(4, 1000000.0, prompt="uniform:2,20", output="fixed:12", seed=0)
    for request in workload:
        alone = serve(model, [request], max_num_seqs=1, temperature=1.0, top_k=20, stop_at_eos=False).tokens()
        assert alone[request.id] == sampled[str(request.id)]


def test_requests_end_at_the_end_of_sequence_token_unless_told_to_ignore_it(tiny_model, capsys):
    """The tiny models' end of sequence is id 2: a request that draws it stops there, and the
    summary counts it; --ignore-eos runs every request to its output length."""
    folder = str(tiny_model("llama"))
    args = ["serve-sim", folder, "--device", "tiny", "--requests", "8", "--rate", "1000000",
            "--prompt-len", "uniform:2,20", "--output-len", "fixed:60", "--max-num-seqs", "4"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    stopped = [t for t in out["tokens"].values() if len(t) < 60]
    assert stopped and all(t[-1] == 2 and 2 not in t[:-1] for t in stopped)
    assert out["summary"]["stopped_at_eos"] == len(stopped)
    assert out["summary"]["output_tokens"] == sum(len(t) for t in out["tokens"].values())
    assert main(args) == 0
    assert f"{len(stopped)} of 8 requests ended at an end-of-sequence token" in capsys.readouterr().out
    assert main([*args, "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(t) for t in out["tokens"].values()] == [60] * 8 and out["summary"]["stopped_at_eos"] == 0


def test_the_slo_search_finds_the_highest_rate_that_meets_it(capsys):
    slo = "ttft_p90=150ms,tpot_p99=30ms"
    assert main(["serve-sim", *BASE, "--slo", slo, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rate, tried = out["max_rate"], out["tried"]
    assert rate > 0 and out["summary"]["ttft"]["p90"] <= 0.150 and out["summary"]["tpot"]["p99"] <= 0.030
    above = min(r for r, ok in tried if not ok and r > rate)
    assert above <= rate * 1.021, "bracketed to the search's tolerance"


def test_max_rate_against_a_closed_form():
    """A latency that grows as 1 / (1 - rate / 10): the SLO `e2e_mean <= 2` holds up to rate 5."""

    def run(workload):
        rate = (len(workload) - 1) / workload[-1].arrival
        value = 1 / (1 - rate / 10) if rate < 10 else float("inf")
        return {"e2e": {"mean": value}}

    from tilesim.serving import Request

    unit = [Request(i, float(i), 1, 1) for i in range(101)]  # exactly one per second
    search = max_rate(run, unit, parse_slo("e2e_mean=2"), start=0.3, tolerance=0.001)
    assert search.rate == pytest.approx(5.0, rel=0.002) and search.rate <= 5.0 and not search.unbounded


def test_a_workload_that_meets_the_slo_at_every_rate_is_said_to_be_unbounded(capsys):
    from tilesim.serving import Request

    unit = [Request(i, float(i), 1, 1) for i in range(3)]
    search = max_rate(lambda w: {"e2e": {"mean": 1.0}}, unit, parse_slo("e2e_mean=2"), start=1.0, steps=10)
    assert search.unbounded and search.rate == 2.0**9, "the doubling stops after its steps, not at an answer"
    assert main(["serve-sim", *MODEL, "--requests", "3", "--prompt-len", "fixed:16", "--output-len", "fixed:4",
                 "--slo", "ttft_p99=10"]) == 0  # fmt: skip
    assert "the 3 requests are served within it even when they all arrive at once" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "--rate 0.0 must be a positive number"),
        (["--requests", "0"], "--requests 0 must be at least 1"),
        (["--max-num-seqs", "0"], "--max-num-seqs 0 must be at least 1"),
        (["--scheduler", "chunked", "--chunk-size", "0"], "--chunk-size 0 must be at least 1"),
        (["--ignore-eos"], "--ignore-eos is for runs of the real tokens"),
        (["--temperature", "-1"], "--temperature -1.0 must be a finite number >= 0"),
        (["--top-p", "2"], "--top-p 2.0 must be a finite number in (0, 1]"),
        (["--chunk-size", "64"], "--chunk-size is for --scheduler chunked"),
        (["--workload", "w.jsonl", "--rate", "3"], "--rate is for a drawn workload; --workload FILE gives"),
        (["--cv", "2"], "--cv is for --arrivals gamma"),
        (["--probes", "3"], "--probes is for the rate search (--slo)"),
        (["--seed", "-1"], "--seed -1 must be at least 0"),
        (["--requests", "1000000000"], "--requests 1000000000 is more than one run takes"),
        (["--prompt-len", "zipf:nan,1,9"], "the Zipf exponent must be a positive number"),
        (["--trace", "out", "--plots", "out"], "--trace and --plots both name"),
        (["--prompt-len", "uniform:9"], "prompt 'uniform:9': give fixed:N"),
        (["--output-len", "fixed:4000", "--max-context", "512"], "request 0 needs"),
        (["--slo", "latency=3"], "SLO term 'latency=3'"),
        (["--slo", "ttft_p90=-1"], "positive time"),
        (["--slo", "ttft_p90=fast"], "SLO term 'ttft_p90=fast'"),
        (["--slo", "ttft_p90=1,ttft_p90=2"], "bounds ttft_p90 twice"),
        (["--workload", "/nonexistent.jsonl"], "does not exist"),
        (["--slo", "ttft_p90=1", "--workload", "w.jsonl"], "--slo scales a drawn workload"),
        (["--device", "warp-drive"], "unknown device preset 'warp-drive'"),
    ],
)
def test_bad_input_is_one_line(capsys, args, message):
    base = MODEL if "--workload" in args else BASE  # a file's requests take no drawn-workload options
    assert main(["serve-sim", *base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_bad_workload_line_is_named(tmp_path, capsys):
    path = tmp_path / "w.csv"
    path.write_text("arrival,prompt_tokens,output_tokens\n0,10,5\n-2,10,5\n")
    assert main(["serve-sim", "llama-2-7b", "--device", "trn1", "--tp", "8", "--workload", str(path)]) == 2
    assert "line 3: arrival '-2'" in capsys.readouterr().err


def test_sweep_ranks_configurations_by_the_rate_meeting_the_slo(tmp_path, capsys):
    plot = tmp_path / "pareto.png"
    args = ["sweep", "llama-2-7b", "--device", "trn1", "--tp", "2,8", "--timing-only",
            "--slo", "ttft_p90=1,tpot_p99=40ms", "--requests", "40", "--prompt-len", "128",
            "--max-new-tokens", "32", "--plot", str(plot), "--json"]  # fmt: skip
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tp"] for r in rows] == [2, 8] and all(r["fits"] for r in rows)
    assert rows[1]["max_rate_rps"] > rows[0]["max_rate_rps"] > 0, "more cores serve more"
    assert all(r["tpot_p99_s"] <= 0.040 and r["ttft_p90_s"] <= 1 for r in rows)
    assert rows[1]["pareto"] and plot.stat().st_size > 0


def test_sweep_serves_with_the_sampling_asked_for(tmp_path, capsys, monkeypatch):
    """sweep --slo takes serve-sim's sampling flags to every serve() of its search; without
    --slo they are refused, and a bad value before any point runs."""
    import tilesim.cli.sweep_slo as sweep_slo

    seen = []

    def recording(model, workload, **options):
        seen.append(options)
        return real(model, workload, **options)

    real = sweep_slo.serve
    monkeypatch.setattr(sweep_slo, "serve", recording)
    args = ["sweep", "llama-2-7b", "--device", "trn1", "--tp", "8", "--timing-only", "--slo", "ttft_p90=1",
            "--requests", "8", "--prompt-len", "64", "--max-new-tokens", "8", "--json"]  # fmt: skip
    assert main([*args, "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--ignore-eos"]) == 0
    assert seen and all(
        o["temperature"] == 0.7 and o["top_k"] == 5 and o["top_p"] == 0.9 and o["stop_at_eos"] is False for o in seen
    )
    seen.clear()
    assert main(args) == 0
    assert seen and all(o["temperature"] is None and o["stop_at_eos"] is True for o in seen)
    capsys.readouterr()
    plain = ["sweep", "llama-2-7b", "--device", "trn1", "--tp", "8", "--timing-only"]
    assert main([*plain, "--temperature", "1"]) == 2
    assert "--temperature is for --slo" in capsys.readouterr().err
    assert main([*plain, "--ignore-eos"]) == 2
    assert "--ignore-eos is for --slo" in capsys.readouterr().err
    seen.clear()
    assert main([*args, "--top-p", "0"]) == 2
    assert "--top-p 0.0 must be a finite number in (0, 1]" in capsys.readouterr().err and not seen
