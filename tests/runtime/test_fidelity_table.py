"""The Neuron SDK 2.18 Llama-2 table: every published configuration is expressible (the 70B
rows at TP 24 need grouped-query heads padded and replicated), and the table's predictions
are the times a `generate` run of the same request shows."""

import warnings

import numpy as np
import pytest

import tilesim
from tilesim import ConfigError
from tilesim.cli.main import main
from tilesim.fidelity import load_latency_rows, predict_latencies, predict_latency

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
    assert main(["fidelity", "--device", "h100"]) == 2
    assert "--device 'h100': no published rows" in capsys.readouterr().err
    for empty in (",,", ""):
        assert main(["fidelity", "--device", empty]) == 2
        err = capsys.readouterr().err
        assert f"--device {empty!r}: names no device; the rows are of a100," in err


def test_rows_predicted_in_processes_raise_their_warnings_here_once_each_in_the_rows_order():
    """Two models' rows past Llama-2's 4096 positions, each model in a process of its own: the
    warnings one process raises, in its order, and the same figures."""
    rows = [r for r in ROWS if r.instance == "inf2.48xlarge" and r.batch == 1 and r.output_len in (8064, 4096)]
    rows = rows + rows[:1]  # a model's second row warns as its first did: once
    assert [r.model for r in rows] == ["Llama-2-7b", "Llama-2-13b", "Llama-2-7b"]
    seen = {}
    for jobs in (1, 2):
        done = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            predicted = predict_latencies(rows, jobs=jobs, progress=done.append)
        seen[jobs] = [str(w.message) for w in caught], predicted
        assert sum(done) == len(rows)
    messages, predicted = seen[2]
    assert (messages, predicted) == seen[1]
    assert len(messages) == 2 and "llama-2-7b" in messages[0] and "llama-2-13b" in messages[1]
    assert predicted[2] == predicted[0]


@pytest.mark.parametrize("jobs", [0, -1, 1.5, "2", True, None])
def test_a_count_of_processes_that_is_not_a_whole_number_from_1_is_refused(jobs):
    with pytest.raises(ConfigError, match=f"jobs={jobs!r} must be"):
        predict_latencies(ROWS[:1], jobs=jobs)


@pytest.fixture
def table(neuron_table):
    return neuron_table


@pytest.mark.parametrize("instance", ["trn1.32xlarge", "inf2.48xlarge"])
def test_the_shipped_figures_give_each_published_time_per_token_within_15_percent(table, instance):
    """The goal of the fit (docs/fidelity.md), met for TPOT on every row: a decode step is
    each weight read once, the KV cache read position by position, the host's launch and
    sampling, and the all-reduces."""
    errors = np.array([r["tpot_error"] for r in table if r["instance"] == instance])
    assert np.abs(errors).mean() <= 0.05
    assert np.abs(errors).max() <= 0.15


def test_the_shipped_figures_give_time_to_first_token_within_the_goals_but_four_rows(table):
    """TTFT: the goal's 15% mean |error| over the 34 rows and on either instance, and
    every row within 35% but four that docs/fidelity.md shows at odds with the others (on
    inf2, Llama-2-13b's batch-8 4096-token prefill is 21 times its batch-1 one; on trn1,
    Llama-2-13b's long prompts at batch 1 and 8 are 2.6 times slower than on inf2, where the
    two instances share the core's figures, and its batch-4 8192-token prefill only 1.95
    times its batch-1 one); those within 60%."""
    outliers = {
        ("inf2.48xlarge", "Llama-2-13b", 8, 4096),
        ("trn1.32xlarge", "Llama-2-13b", 1, 4096),
        ("trn1.32xlarge", "Llama-2-13b", 1, 8192),
        ("trn1.32xlarge", "Llama-2-13b", 8, 4096),
    }
    errors = np.abs([r["ttft_error"] for r in table])
    assert errors.mean() <= 0.15
    assert errors.max() <= 0.6
    for instance in ("trn1.32xlarge", "inf2.48xlarge"):
        assert np.mean([abs(r["ttft_error"]) for r in table if r["instance"] == instance]) <= 0.15
    for r in table:
        if (r["instance"], r["model"], r["batch"], r["input_len"]) not in outliers:
            assert abs(r["ttft_error"]) <= 0.35, r


def test_the_command_sums_up_each_instance_against_the_goals(table, fidelity_predicted_once, capsys):
    """The closing lines: the mean |error| (one decimal, the goal is 15%) and how many rows
    are beyond 35%, over all rows and per instance, as counted here from the predictions."""
    assert main(["fidelity", "--device", "trn1.32xlarge,inf2.48xlarge"]) == 0
    out = capsys.readouterr().out
    for instance in ("", "trn1.32xlarge", "inf2.48xlarge"):
        mine = [r for r in table if instance in r["instance"]]
        ttft = np.abs([r["ttft_error"] for r in mine])
        beyond = int((ttft > 0.35).sum()), sum(abs(r["tpot_error"]) > 0.35 for r in mine)
        label = f"  {instance}: " if instance else ""
        line = f"{label}{len(mine)} rows; mean |error| TTFT {100 * ttft.mean():.1f}%"
        assert line in out and f"{line} (worst {100 * ttft.max():.0f}%)" in out
        summary = next(x for x in out.splitlines() if x.startswith(line))
        assert summary.endswith(f", TPOT {beyond[1]}")
        assert f"rows beyond 35%: TTFT {beyond[0]} (" in summary or summary.endswith(f"TTFT {beyond[0]}, TPOT 0")
    assert "goals: 15% mean |error|, no row beyond 35%" in out


def test_the_json_sums_up_each_instance_as_the_rows_say(table, capsys):
    """In two processes (a model's rows in one) the rows are the ones predicted here in one,
    to the bit, in the table's order."""
    import json

    assert main(["fidelity", "--device", "inf2.48xlarge", "--json", "--jobs", "2"]) == 0
    document = json.loads(capsys.readouterr().out)
    mine = [r for r in table if r["instance"] == "inf2.48xlarge"]
    assert [{k: r[k] for k in mine[0]} for r in document["neuron"]] == mine
    ttft = np.abs([r["ttft_error"] for r in mine])
    for name in ("all", "inf2.48xlarge"):
        s = document["neuron_summary"][name]
        assert s["rows"] == len(mine) == 16
        assert s["ttft_mean_abs_error"] == pytest.approx(ttft.mean(), rel=1e-12)
        assert s["ttft_max_abs_error"] == pytest.approx(ttft.max(), rel=1e-12)
        assert s["ttft_rows_beyond_goal"] == int((ttft > 0.35).sum())
    assert set(document["neuron_summary"]) == {"all", "inf2.48xlarge"}


def test_the_a100_preset_gives_gpt_fasts_decode_steps_within_15_percent():
    """gpt-fast on A100-80GB, TP 1-8, bf16/int8/int4 weights: the shipped figures
    (benchmarks/calibrate.py --gpu) give every row's time per token within 15%."""
    from tilesim.fidelity import load_gpu_rows, predict_gpu

    rows = load_gpu_rows()
    assert len(rows) == 10
    errors = np.array([predict_gpu(r)["tpot_error"] for r in rows])
    assert np.abs(errors).max() <= 0.15


def test_the_a100_fabric_follows_the_nccl_tests_all_reduce_curve_within_the_stated_bounds():
    """nccl-tests all_reduce_perf on 8 A100s with the same fabric figures (LL128's below
    16 MiB, Simple's from there: docs/fidelity.md): every point from 1 MiB up within 15%, the
    latency floor below it within 25%."""
    from tilesim.fidelity import load_allreduce_rows, predict_allreduce

    results = [predict_allreduce(r) for r in load_allreduce_rows()]
    big = np.abs([r["error"] for r in results if r["size_bytes"] >= 1 << 20])
    small = np.abs([r["error"] for r in results if r["size_bytes"] < 1 << 20])
    assert len(big) == 15 and big.max() <= 0.15
    assert small.max() <= 0.25


def test_the_command_prints_the_gpu_rows_and_the_curve(capsys):
    assert main(["fidelity", "--device", "a100"]) == 0
    out = capsys.readouterr().out
    assert "gpt-fast on A100-80GB" in out and "nccl-tests all_reduce_perf" in out
    assert "Llama-2-70b" in out and "int4" in out and "16 GiB" in out
