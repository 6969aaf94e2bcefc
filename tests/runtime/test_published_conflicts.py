"""Published rows at odds with each other, found from the published figures alone: a row's
own throughput against its TTFT and TPOT, and a prefill against one with at least as many
prompt tokens in prompts at least as long. Checked on made-up rows against closed forms, and
on the Neuron SDK 2.18 table against a reading of the CSV made here."""

import csv
import math

import pytest

from tilesim.cli.main import main
from tilesim.fidelity import SDK218, LatencyRow, load_latency_rows, published_conflicts, smallest_worst_error


def row(batch, input_len, ttft_ms, *, output_len=128, tpot_ms=10.0, tok_s=None, model="M", instance="I"):
    return LatencyRow(model, instance, 8, batch, input_len, output_len, ttft_ms / 1e3, tpot_ms / 1e3, "test", tok_s)


def throughput(batch, output_len, ttft_ms, tpot_ms, stretch):
    """The tokens/s of a request whose end to end time is `stretch` times TTFT + TPOT x (out - 1)."""
    return batch * output_len / (stretch * (ttft_ms + tpot_ms * (output_len - 1)) / 1e3)


@pytest.mark.parametrize("stretch, flagged", [(1.3, True), (0.7, True), (1.2, False), (0.84, False), (1.0, False)])
def test_a_row_whose_own_throughput_disagrees_by_more_than_a_quarter_is_flagged(stretch, flagged):
    r = row(2, 512, 80.0, output_len=256, tpot_ms=12.0, tok_s=throughput(2, 256, 80.0, 12.0, stretch))
    found = published_conflicts([r])[0]
    assert bool(found) == flagged
    if flagged:
        timed = 0.080 + 0.012 * 255
        assert found[0].startswith("at 2 x 512 tokens, its own throughput")  # the note names its row
        assert f"its TTFT and TPOT at {timed:.1f} s" in found[0]
        assert f"end to end at {stretch * timed:.1f} s" in found[0].replace("request at ", "end to end at ")


def test_a_longer_prompt_that_takes_less_than_its_tokens_say_is_at_odds_on_both_rows():
    short, long = row(1, 1024, 100.0), row(1, 2048, 150.0)  # twice the tokens, 1.5 times the time
    found = published_conflicts([short, long])
    gap = 0.9 * 2 / 1.5  # the floor (90% of twice) over the published ratio
    assert found[0] == found[1] and len(found[0]) == 1
    assert f"no timing model is within {(gap - 1) / (gap + 1):.0%} of both" in found[0][0]
    assert "2 times the prompt tokens in prompts twice as long" in found[0][0]
    assert smallest_worst_error([short, long]) == pytest.approx((gap - 1) / (gap + 1), abs=2e-4)


@pytest.mark.parametrize(
    "rows",
    [
        [row(1, 1024, 100.0), row(1, 2048, 190.0)],  # 1.9 times: within the 10% for fixed costs
        [row(1, 512, 100.0), row(1, 1024, 110.0)],  # below 1024 tokens fixed costs and weight reads count
        [row(1, 1024, 100.0), row(1, 2048, 120.0, instance="J")],  # another instance
        [row(1, 1024, 100.0), row(1, 2048, 120.0, model="N")],  # another model
        [row(8, 1024, 800.0), row(1, 2048, 300.0)],  # fewer prompt tokens in all: no rule
    ],
)
def test_rows_the_rule_does_not_bind_are_not_at_odds(rows):
    assert published_conflicts(rows) == [[], []]
    assert smallest_worst_error(rows) == 0.0


def test_the_smallest_worst_error_of_a_chain_is_that_of_its_ends():
    """1024, 2048 and 4096 tokens published at 100, 150 and 200 ms: a model needs the last at
    least 0.9 x 4 = 3.6 times the first, where the rows say 2; with the middle row free between
    them, the best model splits the factor 1.8 between the ends: (1 + e) / (1 - e) = 1.8."""
    rows = [row(1, 1024, 100.0), row(1, 2048, 150.0), row(1, 4096, 200.0)]
    assert smallest_worst_error(rows) == pytest.approx(0.8 / 2.8, abs=2e-4)
    assert [len(f) for f in published_conflicts(rows)] == [2, 2, 2]


def test_the_same_prompt_tokens_in_longer_prompts_take_at_least_as_long():
    """Batch 8 x 4096 tokens and batch 4 x 8192: the same products, more attention."""
    found = published_conflicts([row(8, 4096, 7000.0), row(4, 8192, 5000.0)])
    assert "for as many prompt tokens in prompts twice as long" in found[0][0]


def test_in_the_neuron_table_only_llama_2_13b_s_long_prompts_on_trn1_disagree_with_their_own_throughput():
    """Read here from the CSV: batch x output tokens / output_tok_s against TTFT + TPOT x (out - 1)."""
    with open(SDK218, newline="") as f:
        published = list(csv.DictReader(f))
    stretch = [
        int(r["batch"]) * int(r["output_len"]) / float(r["output_tok_s"])
        / ((float(r["ttft_p50_ms"]) + float(r["tpot_p50_ms"]) * (int(r["output_len"]) - 1)) / 1e3)
        for r in published
    ]  # fmt: skip
    found = published_conflicts(load_latency_rows())
    own = [any("its own throughput" in t for t in f) for f in found]
    assert own == [abs(s - 1) > 0.25 for s in stretch]
    flagged = [(r["model"], r["instance"], r["batch"], r["input_len"]) for r, o in zip(published, own, strict=True)
               if o]  # fmt: skip
    assert flagged == [
        ("Llama-2-13b", "trn1.32xlarge", "1", "4096"),
        ("Llama-2-13b", "trn1.32xlarge", "1", "8192"),
    ]
    assert max(abs(s - 1) for s, o in zip(stretch, own, strict=True) if not o) < 0.17


def test_the_command_marks_the_rows_at_odds_and_says_how_far_off_any_model_must_be(fidelity_predicted_once, capsys):
    import json

    assert main(["fidelity", "--device", "trn1.32xlarge,inf2.48xlarge", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    rows = load_latency_rows()
    assert [r["published_conflicts"] for r in document["neuron"]] == published_conflicts(rows)
    for name, s in document["neuron_summary"].items():
        mine = [r for r in document["neuron"] if name in ("all", r["instance"])]
        beyond = [r for r in mine if abs(r["ttft_error"]) > 0.35]
        assert s["ttft_rows_beyond_goal_at_odds"] == sum(bool(r["published_conflicts"]) for r in beyond)
    floors = document["neuron_ttft_error_floor"]
    assert set(floors) == {"Llama-2-13b on trn1.32xlarge", "Llama-2-13b on inf2.48xlarge"}
    for group, floor in floors.items():
        model, instance = group.split(" on ")
        mine = [r for r in document["neuron"] if (r["model"], r["instance"]) == (model, instance)]
        assert max(abs(r["ttft_error"]) for r in mine) >= floor - 1e-9  # the shipped figures obey the floor
        assert math.isfinite(floor) and 0 < floor < 1

    # a group's floor is at least each pair's: Llama-2-13b at 8192 tokens on trn1, batch 1 and 4
    one, four = (next(r for r in rows if (r.instance, r.model, r.input_len, r.batch) == ("trn1.32xlarge",
                 "Llama-2-13b", 8192, b)) for b in (1, 4))  # fmt: skip
    gap = 0.9 * 4 / (four.ttft_s / one.ttft_s)
    pair = (gap - 1) / (gap + 1)
    assert floors["Llama-2-13b on trn1.32xlarge"] >= pair - 2e-4

    assert main(["fidelity", "--device", "trn1.32xlarge"]) == 0
    out = capsys.readouterr().out
    assert "Published rows at odds with other published rows" in out
    floor = floors["Llama-2-13b on trn1.32xlarge"]
    assert f"Whatever the timing model, one TTFT of Llama-2-13b on trn1.32xlarge is at least {floor:.0%} off." in out
    assert f"no timing model is within {pair:.0%} of both" in out
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert header.endswith("at odds")
