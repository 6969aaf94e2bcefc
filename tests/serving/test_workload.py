"""Workloads: files (JSONL, CSV) read or refused with the line named; drawn workloads
reproducible from their seed and distributed as asked (checked against the distributions'
closed-form moments and ranges)."""

import numpy as np
import pytest

from tilesim.errors import TilesimWarning
from tilesim.serving import Request, read_workload, synthetic
from tilesim.serving.workload import LATEST_ARRIVAL, WorkloadError, at_rate


def test_jsonl_and_csv_give_the_same_requests_in_arrival_order(tmp_path):
    jsonl = tmp_path / "w.jsonl"
    jsonl.write_text(
        '{"arrival": 0.5, "prompt_tokens": 10, "output_tokens": 3}\n\n'
        '{"arrival": 0.1, "prompt_tokens": 20, "output_tokens": 5, "seed": 9}\n'
    )
    csv = tmp_path / "w.csv"
    csv.write_text("arrival,prompt_tokens,output_tokens,seed\n0.5,10,3,0\n0.1,20,5,9\n")
    for path in (jsonl, csv):
        requests = read_workload(path)
        assert [(r.id, r.arrival, r.prompt_tokens, r.output_tokens, r.seed) for r in requests] == [
            (1, 0.1, 20, 5, 9),
            (0, 0.5, 10, 3, 0),
        ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("neg.jsonl", '{"arrival": 0, "prompt_tokens": 1, "output_tokens": 1}\n'
                      '{"arrival": -1, "prompt_tokens": 1, "output_tokens": 1}\n', "line 2: arrival"),
        ("nan.csv", "arrival,prompt_tokens,output_tokens\nnan,1,1\n", "line 2: arrival"),
        ("zero.csv", "arrival,prompt_tokens,output_tokens\n0,1,1\n0,0,1\n", "line 3: prompt_tokens"),
        ("frac.jsonl", '{"arrival": 0, "prompt_tokens": 1.5, "output_tokens": 1}\n', "line 1: prompt_tokens"),
        ("word.jsonl", '{"arrival": "soon", "prompt_tokens": 1, "output_tokens": 1}\n', "line 1: arrival"),
        ("missing.jsonl", '{"arrival": 0, "prompt_tokens": 1}\n', "line 1: missing output_tokens"),
        ("broken.jsonl", '{"arrival": 0, "prompt_tokens": 1, "output_tokens": 1}\n{"arrival": \n', "line 2: not JSON"),
        ("list.jsonl", "[1, 2, 3]\n", "not JSONL|line 1"),
        ("header.csv", "time,prompt,output\n0,1,1\n", "line 1: the CSV header lacks arrival"),
        ("short.csv", "arrival,prompt_tokens,output_tokens\n0,1\n", "line 2: a field is missing"),
        ("long.csv", "arrival,prompt_tokens,output_tokens\n0,1,1\n0,1,1,7\n", "line 3: more fields than the header"),
        ("huge.jsonl", '{"arrival": 0, "prompt_tokens": 1e300, "output_tokens": 1}\n',
                       "line 1: prompt_tokens .* to 10,000,000"),
        ("late.jsonl", '{"arrival": 2e9, "prompt_tokens": 1, "output_tokens": 1}\n',
                       r"line 1: arrival 2e\+09 s is later than 1e\+09 s \(32 years\)"),
        ("prose.txt", "hello there\nthis is not a workload\n", "neither JSONL"),
        ("empty.jsonl", "\n\n", "is empty"),
        ("nothing.csv", "", "is empty"),  # the header's absence was the message before
        ("header_only.csv", "arrival,prompt_tokens,output_tokens\n", "no requests"),
        ("dup.jsonl", '{"id": 3, "arrival": 0, "prompt_tokens": 1, "output_tokens": 1}\n'
                      '{"id": 3, "arrival": 1, "prompt_tokens": 1, "output_tokens": 1}\n', "id 3 appears twice"),
        ("deep.jsonl", '{"arrival": 0, "prompt_tokens": 1, "output_tokens": 1}\n' + "[" * 100_000 + "]" * 100_000,
                       "line 2: not a request .*nested too deep"),  # a RecursionError
    ],
)  # fmt: skip
def test_a_bad_workload_file_is_refused_naming_its_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(WorkloadError, match=message):
        read_workload(path)


def test_a_spreadsheets_byte_order_mark_is_skipped_and_fields_not_read_are_named(tmp_path):
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbfarrival,prompt_tokens,output_tokens\n0.5,10,3\n")  # was "lacks arrival"
    assert [(r.arrival, r.prompt_tokens, r.output_tokens) for r in read_workload(bom)] == [(0.5, 10, 3)]
    typo = tmp_path / "typo.jsonl"
    typo.write_text('{"arrival": 0, "prompt_tokens": 4, "output_tokens": 4, "seeed": 3, "user": "a"}\n')
    with pytest.warns(TilesimWarning, match="typo.jsonl: 'seeed', 'user' not read"):
        (request,) = read_workload(typo)
    assert request.seed == 0


def test_missing_folder_and_binary_files_are_refused(tmp_path):
    with pytest.raises(WorkloadError, match="does not exist"):
        read_workload(tmp_path / "nope.jsonl")
    with pytest.raises(WorkloadError, match="is a folder"):
        read_workload(tmp_path)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(WorkloadError, match="not text"):
        read_workload(tmp_path / "bin.jsonl")


def test_a_drawn_workload_is_its_seeds():
    a = synthetic(50, 3.0, prompt="zipf:1.2,8,512", output="uniform:4,64", arrivals="gamma", cv=2.0, seed=5)
    b = synthetic(50, 3.0, prompt="zipf:1.2,8,512", output="uniform:4,64", arrivals="gamma", cv=2.0, seed=5)
    c = synthetic(50, 3.0, prompt="zipf:1.2,8,512", output="uniform:4,64", arrivals="gamma", cv=2.0, seed=6)
    assert a == b and a != c


@pytest.mark.parametrize(("arrivals", "cv"), [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0), ("gamma", 1e-6)])
def test_arrival_gaps_have_the_asked_mean_and_variation(arrivals, cv):
    rate, n = 4.0, 40_000
    times = np.array([r.arrival for r in synthetic(n, rate, arrivals=arrivals, cv=cv, seed=1)])
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_lengths_follow_their_laws():
    n = 20_000
    fixed = synthetic(10, 1.0, prompt="fixed:77", output="5", seed=0)
    assert {r.prompt_tokens for r in fixed} == {77} and {r.output_tokens for r in fixed} == {5}
    uniform = np.array([r.prompt_tokens for r in synthetic(n, 1.0, prompt="uniform:10,20", seed=0)])
    assert uniform.min() == 10 and uniform.max() == 20 and uniform.mean() == pytest.approx(15, rel=0.01)
    zipf = np.array([r.prompt_tokens for r in synthetic(n, 1.0, prompt="zipf:1.5,1,100", seed=0)])
    k = np.arange(1, 101)
    p = k**-1.5 / np.sum(k**-1.5)
    assert zipf.min() >= 1 and zipf.max() <= 100
    assert np.mean(zipf == 1) == pytest.approx(p[0], abs=0.01)
    assert zipf.mean() == pytest.approx(np.sum(k * p), rel=0.03)


@pytest.mark.parametrize(
    "spec",
    ["uniform:5", "uniform:9,3", "fixed:0", "fixed:2.5", "zipf:0,1,9", "normal:3,4", "", "fixed:x",
     "fixed:inf", "fixed:nan", "uniform:1,inf", "zipf:nan,1,9", "zipf:inf,1,9", "zipf:1,1,1e30"],
)  # fmt: skip
def test_bad_length_laws_are_refused(spec):
    with pytest.raises(WorkloadError, match="prompt"):
        synthetic(3, 1.0, prompt=spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"requests": 0}, "requests"), ({"rate": 0.0}, "rate"), ({"rate": float("inf")}, "rate"),
     ({"arrivals": "uniform"}, "arrivals"), ({"cv": -1.0}, "cv"), ({"seed": -1}, "seed=-1"),
     ({"requests": 10**9}, "more than one run takes"), ({"cv": "2"}, "cv='2'"), ({"prompt": 5.5}, "prompt 5.5"),
     # 1/cv^2 divided by zero and overflowed (tracebacks); past 10 the draws round to zero gaps
     ({"cv": 1e-300}, "cv=1e-300 must be a coefficient of variation from 1e-06"), ({"cv": 1e300}, "cv=1e\\+300"),
     ({"cv": 30.0}, "to 10 \\(bursty"),
     # arrivals near 1e300 s: a time to first token of 40 us came out as 0 s
     ({"rate": 1e-300}, r"rate=1e-300: the last of 3 requests would come at .* give a rate of at least 1.1e-09")],
)  # fmt: skip
def test_bad_generator_options_are_refused(kwargs, message):
    args = {"requests": 3, "rate": 1.0, **kwargs}
    with pytest.raises(WorkloadError, match=message):
        synthetic(args.pop("requests"), args.pop("rate"), **args)


@pytest.mark.parametrize("requests", [3, 1000])
def test_the_least_rate_a_too_slow_workload_is_told_to_take_fits(requests):
    with pytest.raises(WorkloadError) as refused:
        synthetic(requests, 1e-300, seed=4)
    least = float(str(refused.value).rsplit(" ", 1)[1])
    assert synthetic(requests, least, seed=4)[-1].arrival <= LATEST_ARRIVAL


def test_a_rate_search_that_nothing_meets_stops_before_its_arrivals_come_too_late():
    from tilesim.serving import max_rate, parse_slo

    unit = synthetic(100, 1.0, seed=1)
    latest = []

    def never(workload):
        latest.append(max(r.arrival for r in workload))
        return {"ttft": {"p99": 1.0}}

    search = max_rate(never, unit, parse_slo("ttft_p99=1ms"))
    assert search.rate == 0.0 and len(latest) > 20 and max(latest) <= LATEST_ARRIVAL


def test_at_rate_scales_the_arrivals_only():
    unit = synthetic(20, 1.0, prompt="uniform:1,9", seed=2)
    faster = at_rate(unit, 4.0)
    assert [r.arrival * 4 for r in faster] == pytest.approx([r.arrival for r in unit])
    assert [(r.id, r.prompt_tokens, r.seed) for r in faster] == [(r.id, r.prompt_tokens, r.seed) for r in unit]


def test_a_workload_file_past_what_a_run_takes_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    """/dev/zero was read until the kernel killed the process; a file of more requests than a run
    takes was parsed whole first (each request's record is about 2 KiB)."""
    from tilesim.serving import workload

    monkeypatch.setattr(workload, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(workload, "MAX_REQUESTS", 3)
    with pytest.raises(WorkloadError, match="/dev/zero is larger than 0 MiB, more than the 3 requests a run takes"):
        read_workload("/dev/zero")
    many = tmp_path / "many.csv"
    many.write_text("arrival,prompt_tokens,output_tokens\n" + "0,1,1\n" * 4)
    with pytest.raises(WorkloadError, match=r"many\.csv holds more than 3 requests"):
        read_workload(many)
    many.write_text("arrival,prompt_tokens,output_tokens\n" + "0,1,1\n" * 3)
    assert len(read_workload(many)) == 3
    nul = tmp_path / "nul.jsonl"
    nul.write_bytes(b'{"arrival": 0, "prompt_tokens": 1, "output_tokens": 1}\n\0\n')
    with pytest.raises(WorkloadError, match=r"nul\.jsonl is not text"):
        read_workload(nul)


def test_a_whole_number_is_a_fixed_length_and_other_types_are_refused():
    assert {r.prompt_tokens for r in synthetic(4, 1.0, prompt=9)} == {9}
    with pytest.raises(WorkloadError, match="path=5 must be the path of a JSONL or CSV file"):
        read_workload(5)


def test_requests_and_options_built_in_python_are_checked_as_a_files_lines(tiny_model):
    """A text prompt was a TypeError, a prompt of 1.5s was served, and stop_at_eos="no" stopped
    at the end of sequence."""
    import tilesim
    from tilesim.serving import serve

    model = tilesim.load(str(tiny_model("llama")), device="tiny", tp=1, max_context=32, timing_only=True)
    for prompt in ("abcd", (1.5, 2, 3, 4), (1, 2, True, 4), 5):
        with pytest.raises(WorkloadError, match="its prompt must be 4 ids below"):
            serve(model, [Request(0, 0.0, 4, 2, prompt=prompt)])
    assert serve(model, [Request(0, 0.0, 4, 2, prompt=np.array([1, 2, 3, 4]))]).summary()["requests"] == 1
    with pytest.raises(WorkloadError, match="stop_at_eos='no' must be True or False"):
        serve(model, [Request(0, 0.0, 4, 2)], stop_at_eos="no")
