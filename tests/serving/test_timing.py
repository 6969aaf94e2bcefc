"""The server's times against closed forms: one request is `generate`'s TTFT and TPOT; a
static batch of identical requests is the batch run; one slot under Poisson arrivals is an
M/D/1 queue (Pollaczek-Khinchine's mean wait, and a share 1 - rho of requests never queued);
a prefill chunk after cached positions costs the attention over them."""

import math

import numpy as np
import pytest

import tilesim
from tilesim.runtime import costs
from tilesim.runtime.timing import StepShape
from tilesim.serving import Request, serve, synthetic
from tilesim.serving.workload import LATEST_ARRIVAL, WorkloadError


@pytest.fixture(scope="module")
def model():
    return tilesim.load("llama-2-7b", device="trn1", tp=8, dtype="bf16", timing_only=True, max_context=1024)


def test_one_request_takes_what_generate_takes(model):
    prompt, output = 300, 40
    served = serve(model, [Request(0, 1.5, prompt, output)], max_num_seqs=1)
    run = model.generate([[0] * prompt], max_new_tokens=output, eos_token_id=None).report
    times = served.summary()
    assert times["ttft"]["p50"] == pytest.approx(run["ttft_s"], rel=1e-12)
    assert times["tpot"]["p50"] == pytest.approx(run["tpot_s"]["mean"], rel=1e-9)
    assert times["e2e"]["p50"] == pytest.approx(run["sim_total_s"], rel=1e-9)
    assert times["queue"]["max"] == 0.0


def test_one_token_requests_have_no_time_per_output_token_and_an_slo_on_it_is_refused(model):
    """Their TPOT statistics were NaN: `--json` printed NaN, which is not JSON, and a search
    bounding TPOT halved the rate 30 times before it said that no rate meets the SLO."""
    import json

    from tilesim.serving import max_rate, parse_slo

    one = [Request(i, 0.1 * i, 64, 1) for i in range(4)]
    summary = serve(model, one).summary()
    assert set(summary["tpot"].values()) == {None}
    assert summary["ttft"]["max"] > 0
    json.dumps(summary, allow_nan=False)
    runs = []

    def run(workload):
        runs.append(workload)
        return serve(model, workload).summary()

    with pytest.raises(WorkloadError, match="tpot_p99: no request of the workload asks for two tokens or more"):
        max_rate(run, one, parse_slo("ttft_p90=1,tpot_p99=50ms"))
    assert runs == []  # known from the requests
    ended = {"ttft": {"p90": 0.01}, "tpot": {"p99": None}}  # two tokens asked, the first one ended them
    with pytest.raises(WorkloadError, match=r"tpot_p99: no request of the workload made two.*stop_at_eos=False"):
        max_rate(lambda w: ended, [Request(0, 0.0, 64, 2)], parse_slo("ttft_p90=1,tpot_p99=50ms"))
    assert max_rate(run, one, parse_slo("ttft_p90=1")).rate > 0
    from tilesim.cli.main import in_cli_words

    with pytest.raises(WorkloadError) as raised:
        max_rate(lambda w: ended, [Request(0, 0.0, 64, 2)], parse_slo("tpot_p99=50ms"))
    assert "(--ignore-eos if they end at an end-of-sequence token)" in in_cli_words(str(raised.value))


def test_the_latest_arrival_still_times_a_request_as_generate_does(tiny_model):
    """The run's clock is float64 seconds: a request arriving at 1e300 s had a time to first
    token of 0 s. Up to the latest arrival taken (1e9 s) a tiny device's tens of microseconds
    stay within 1%; past it the request is refused."""
    tiny = tilesim.load(str(tiny_model("llama")), device="tiny", tp=1, max_context=32, timing_only=True)
    run = tiny.generate([[0] * 8], max_new_tokens=4, eos_token_id=None).report
    late = serve(tiny, [Request(0, LATEST_ARRIVAL, 8, 4)], max_num_seqs=1).summary()
    assert late["ttft"]["p50"] == pytest.approx(run["ttft_s"], rel=1e-2)
    assert late["tpot"]["p50"] == pytest.approx(run["tpot_s"]["mean"], rel=1e-2)
    with pytest.raises(WorkloadError, match=r"request 0: arrival=1e\+300 s is later than 1e\+09 s"):
        serve(tiny, [Request(0, 1e300, 8, 4)])


def test_a_static_batch_of_identical_requests_is_the_batch_run(model):
    b, prompt, output = 4, 200, 24
    served = serve(model, [Request(i, 0.0, prompt, output) for i in range(b)], scheduler="static", max_num_seqs=b)
    run = model.generate([[0] * prompt] * b, max_new_tokens=output, eos_token_id=None).report
    times = served.summary()
    for stat in ("p50", "max"):
        assert times["ttft"][stat] == pytest.approx(run["ttft_s"], rel=1e-12)
        assert times["tpot"][stat] == pytest.approx(run["tpot_s"]["mean"], rel=1e-9)
    assert len(served.steps) == run["steps"]


def test_one_slot_under_poisson_arrivals_is_an_md1_queue(model):
    prompt, output = 128, 4
    service = serve(model, [Request(0, 0.0, prompt, output)], max_num_seqs=1).summary()["e2e"]["p50"]
    rho, n = 0.3, 10_000
    requests = synthetic(n, rho / service, prompt=f"fixed:{prompt}", output=f"fixed:{output}", seed=11)
    times = serve(model, requests, max_num_seqs=1).summary()
    mean_wait = rho * service / (2 * (1 - rho))  # Pollaczek-Khinchine for deterministic service
    assert times["queue"]["mean"] == pytest.approx(mean_wait, rel=0.15)
    assert times["e2e"]["mean"] == pytest.approx(mean_wait + service, rel=0.05)
    from tilesim.serving.metrics import request_times

    never_queued = np.mean(request_times(serve(model, requests, max_num_seqs=1))["queue"] == 0)
    assert never_queued == pytest.approx(1 - rho, abs=0.02)  # arrivals see time averages (PASTA)


def test_more_load_never_lowers_the_mean_latency_of_the_same_requests(model):
    from tilesim.serving.workload import at_rate

    unit = synthetic(200, 1.0, prompt="uniform:32,256", output="uniform:8,64", seed=4)
    means = [serve(model, at_rate(unit, r), max_num_seqs=4).summary()["e2e"]["mean"] for r in (0.5, 2, 8, 32)]
    assert means == sorted(means)


def test_a_prefill_chunk_attends_to_the_cached_positions(model):
    timer = model.timer
    node = next(n for n in model.graph.nodes if n.op == "attention")
    d = model.graph.head_dim
    hq = timer.sp.widths[node.inputs[0]][0] // d
    cached, chunk = 96, 32
    cost = costs.attention(timer, node, 0, chunk, StepShape("prefill", 1, chunk, cached + chunk))
    keys = cached + (chunk + 1) / 2  # every cached key, and on average half the chunk's own
    assert cost.flops == pytest.approx(4 * chunk * hq * keys * d + 5 * chunk * hq * keys)
    whole = costs.attention(timer, node, 0, chunk, StepShape("prefill", 1, chunk, chunk))
    assert whole.flops == pytest.approx(4 * chunk * hq * (chunk + 1) / 2 * d + 5 * chunk * hq * (chunk + 1) / 2)
    assert math.isclose(cost.flops / whole.flops, keys / ((chunk + 1) / 2))
