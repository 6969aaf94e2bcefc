"""The Chrome trace follows the Trace Event Format's rules, and it agrees with the report."""

import json
import math

import pytest

import tilesim
from tilesim.profiler.chrome import write_chrome_trace
from tilesim.profiler.plots import write_plots
from tilesim.profiler.report import step_breakdown

PHASES = {"X", "M", "C", "s", "f"}


def check_trace_event_format(document: dict) -> None:
    """The rules of the Trace Event Format (Google's spec) that Perfetto's importer relies on."""
    assert isinstance(document["traceEvents"], list)
    flows: dict[tuple, list[str]] = {}
    for event in document["traceEvents"]:
        ph = event["ph"]
        assert ph in PHASES
        assert isinstance(event["pid"], int)
        if ph == "M":
            assert event["name"] in ("process_name", "thread_name", "process_sort_index", "thread_sort_index")
            assert "name" in event["args"] or "sort_index" in event["args"]
            continue
        assert isinstance(event["name"], str) and event["name"]
        assert isinstance(event["ts"], int | float) and math.isfinite(event["ts"]) and event["ts"] >= 0
        if ph == "X":
            assert isinstance(event["tid"], int)
            assert math.isfinite(event["dur"]) and event["dur"] >= 0
        elif ph == "C":
            assert event["args"] and all(isinstance(v, int | float) for v in event["args"].values())
        else:  # flow start/finish
            assert isinstance(event["tid"], int) and "id" in event and "cat" in event
            flows.setdefault((event["cat"], event["id"]), []).append(ph)
            if ph == "f":
                assert event.get("bp") == "e"
    assert all(sorted(kinds) == ["f", "s"] for kinds in flows.values()), "every flow starts once and ends once"
    lanes: dict[tuple, list] = {}
    for event in document["traceEvents"]:
        if event["ph"] == "X":
            lanes.setdefault((event["pid"], event["tid"]), []).append((event["ts"], event["ts"] + event["dur"]))
    for lane, slices in lanes.items():  # slices of one lane nest or follow each other: Perfetto drops the rest
        slices.sort(key=lambda s: (s[0], -s[1]))
        open_ends: list[float] = []
        for start, end in slices:
            while open_ends and open_ends[-1] <= start + 1e-6:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1] + 1e-6, f"lane {lane}: a slice at {start} overlaps another"
            open_ends.append(end)


@pytest.fixture(scope="module")
def run(tmp_path_factory, request):
    folder = request.getfixturevalue("tiny_model")("llama")
    model = tilesim.load(str(folder), device=tilesim.Device("tiny", cores=3), tp=3)
    out = model.generate([[5, 6, 7, 8, 9]], max_new_tokens=6, eos_token_id=None)
    path = write_chrome_trace(out.trace, tmp_path_factory.mktemp("trace") / "t.json")
    return out, json.loads(path.read_text())


def test_the_trace_follows_the_trace_event_format(run):
    _, document = run
    check_trace_event_format(document)
    names = {e["args"]["name"] for e in document["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"core 0", "core 1", "core 2"} <= names
    lanes = {e["args"]["name"] for e in document["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"compute", "memory", "collective"} <= lanes and any(lane.startswith("link ") for lane in lanes)
    assert document["otherData"]["clock"].startswith("simulated")


def test_prefill_and_every_decode_step_are_marked(run):
    out, document = run
    steps = [e for e in document["traceEvents"] if e.get("cat") == "step"]
    assert [e["name"] for e in steps] == ["prefill", *[f"decode {i}" for i in range(1, 6)]]
    for event, record in zip(steps, out.trace.steps, strict=True):
        assert event["ts"] == pytest.approx(record.start * 1e6) and event["dur"] == pytest.approx(record.latency * 1e6)


def test_the_trace_and_the_report_agree(run):
    out, document = run
    report = out.report
    prefill = next(e for e in document["traceEvents"] if e.get("cat") == "step" and e["name"] == "prefill")
    assert prefill["dur"] == pytest.approx(report["ttft_s"] * 1e6)
    decode = [e["dur"] for e in document["traceEvents"] if e.get("cat") == "step" and e["name"].startswith("decode")]
    assert sum(decode) / len(decode) == pytest.approx(report["itl_s"] * 1e6)
    critical = sum(e["dur"] for e in document["traceEvents"] if e["ph"] == "X" and e["args"].get("critical"))
    collectives = [
        e for e in document["traceEvents"] if e.get("cat") == "collective" and e["pid"] == 1 and e["ph"] == "X"
    ]
    step_total = sum(s.latency for s in out.trace.steps) * 1e6
    # Kernel slices on the critical path plus the collectives they wait for make up every step.
    assert critical + sum(e["dur"] for e in collectives) == pytest.approx(step_total, rel=1e-9)
    assert sum(report["decode_breakdown_s"].values()) == pytest.approx(out.trace.steps[-1].latency, rel=1e-12)


def test_collectives_say_which_algorithm_ran_and_messages_have_arrows(run):
    _, document = run
    collectives = [e for e in document["traceEvents"] if e.get("cat") == "collective"]
    assert collectives and all(e["args"]["algo"] for e in collectives)
    assert all("(" in e["name"] for e in collectives)
    transfers = [e for e in document["traceEvents"] if e.get("cat") == "transfer" and e["ph"] == "X"]
    flows = [e for e in document["traceEvents"] if e["ph"] == "s"]
    assert transfers and len(flows) == len(transfers)


def test_messages_that_share_a_link_stay_apart_on_its_lane(tmp_path):
    """A ring all-reduce over 8 cores streams the next chunk on a link while the last is still
    on its way (its hop latency): the lane shows each message until the next one starts, the
    flow arrow and `arrives_us` its arrival (the slices overlapped before)."""
    model = tilesim.load("llama-2-7b", device="trn1", tp=8, timing_only=True, max_context=256)
    out = model.generate([[1] * 64], max_new_tokens=2)
    document = json.loads(write_chrome_trace(out.trace, tmp_path / "t.json").read_text())
    check_trace_event_format(document)
    moves = [e for e in document["traceEvents"] if e.get("cat") == "transfer" and e["ph"] == "X"]
    cut = [e for e in moves if e["args"]["arrives_us"] > e["ts"] + e["dur"] + 1e-6]
    assert cut, "some message is still on its way when the next one on its link starts"
    arrivals = sorted(e["ts"] for e in document["traceEvents"] if e["ph"] == "f")
    assert arrivals == pytest.approx(sorted(e["args"]["arrives_us"] for e in moves))


def test_memory_counters_per_core(run):
    out, document = run
    counters = [e for e in document["traceEvents"] if e["ph"] == "C"]
    assert {e["pid"] for e in counters} == {1, 2, 3}
    weights = {e["pid"]: e["args"]["weights"] for e in counters}
    for core in range(3):
        assert weights[core + 1] == out.report["memory"]["per_core"][core]["weights"]
    assert max(e["args"]["activations"] for e in counters) <= max(
        e["activations"] for e in out.report["memory"]["per_core"]
    )


def test_plots_are_written(run, tmp_path):
    out, _ = run
    paths = write_plots(out.trace, out.report, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["breakdown.png", "memory.png", "roofline.png", "timeline.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.parametrize(("name", "preset", "tp"), [("llama-2-70b", "trn1.32xlarge", 32), ("gpt2-xl", "ipu-gc200", 8)])
def test_no_kernel_of_the_roofline_plot_is_above_the_roofline_it_draws(name, preset, tp):
    """Its ceilings: min(peak, intensity x bandwidth) for each memory; a kernel cannot beat the
    highest. With weights off-chip, the element-wise kernels (rope, residual adds) read tile
    memory and beat the off-chip line alone: the plot drew them above its only roofline."""
    from tilesim.profiler.plots import _ceilings, _decode_step

    model = tilesim.load(name, device=preset, tp=tp, dtype="bf16", timing_only=True, pad_heads=True, max_context=256)
    out = model.generate([[1] * 64], max_new_tokens=2)
    device = out.trace.device
    ceilings = _ceilings(device, device["memory_bandwidth"])
    kernels = [s for s in _decode_step(out.trace).spans if s.lane == "compute" and s.flops > 0 and s.bytes > 0]
    assert kernels
    for span in kernels:
        roof = max(min(device["peak_flops"], span.flops / span.bytes * rate) for _, rate, _ in ceilings)
        assert span.flops / span.duration <= roof * (1 + 1e-9), span.name
    if device["weights_in"] == "offchip":  # trn1: the tile line is there for kernels above the off-chip one
        assert len(ceilings) == 2
        assert any(s.flops / s.duration > s.flops / s.bytes * device["offchip_bandwidth"] for s in kernels)
    else:  # IPU: everything in tile memory, one line
        assert len(ceilings) == 1


def test_outputs_asked_for_in_python_at_a_bad_place_are_named_before_anything_is_written(run, tmp_path):
    """A file where the plots' folder should be was a FileExistsError, a trace path of None a
    TypeError, and serving's plots did the same."""
    from tilesim.errors import ConfigError
    from tilesim.serving import Request, serve
    from tilesim.serving.plots import write_plots as serving_plots

    out, _ = run
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(ConfigError, match=r"plots folder .*taken: is a file; give a folder"):
        write_plots(out.trace, out.report, taken)
    with pytest.raises(ConfigError, match="trace=None must be a run's trace"):
        write_plots(None, out.report, tmp_path / "plots")
    for path in (None, 5):
        with pytest.raises(ConfigError, match=f"trace={path} must be a path"):
            write_chrome_trace(out.trace, path)
    with pytest.raises(ConfigError, match=r"trace .*: is a folder; give a file name"):
        write_chrome_trace(out.trace, tmp_path)
    model = tilesim.load(str(out.trace.model["name"]), device="tiny", tp=1, max_context=16, timing_only=True)
    served = serve(model, [Request(0, 0.0, 2, 2)])
    with pytest.raises(ConfigError, match=r"plots folder .*taken: is a file"):
        serving_plots(served, taken)
    assert taken.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_plots_of_a_long_run_draw_a_collection_per_row_and_colour(tiny_model, tmp_path, monkeypatch):
    """A decode step of a 7B model on 32 cores is 16,000 kernels and 65,000 messages: a
    collection each took matplotlib past ten minutes. Every bar is still drawn, grouped by row
    and colour; past `BARS` steps the breakdown is stacked areas, not a bar a step."""
    from matplotlib.figure import Figure

    from tilesim.profiler.plots import BARS, COLOURS

    model = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=3), tp=3, timing_only=True)
    out = model.generate([[5, 6, 7]], max_new_tokens=BARS + 50, eos_token_id=None)
    drawn, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    write_plots(out.trace, out.report, tmp_path / "plots")
    timeline, breakdown = drawn[0].axes[0], drawn[3].axes[0]
    step = next(s for s in out.trace.steps if s.phase == "decode" and s.messages)
    bars = sum(len(c.get_paths()) for c in timeline.collections)
    assert bars == len(step.spans) + sum(1 for _ in step.transfers)
    assert len(timeline.collections) <= 3 * len(COLOURS)
    assert not breakdown.patches and len(breakdown.collections) == len({k for s in out.trace.steps for k in
                                                                        step_breakdown(s)})  # fmt: skip


def test_the_hosts_part_of_each_step_is_in_the_trace_on_the_compute_lane(tiny_model, tmp_path):
    device = tilesim.Device("tiny", cores=3, step_overhead_s="1 ms", sample_s="0.1 ms", request_overhead_s="2 ms")
    model = tilesim.load(str(tiny_model("llama")), device=device, tp=3)
    out = model.generate([[5, 6, 7, 8, 9]], max_new_tokens=3, eos_token_id=None)
    document = json.loads(write_chrome_trace(out.trace, tmp_path / "t.json").read_text())
    check_trace_event_format(document)
    host = [e for e in document["traceEvents"] if e["ph"] == "X" and e.get("cat") == "host" and e["pid"] == 1]
    assert sorted({e["name"] for e in host}) == ["launch", "request", "sample"]
    assert [e["dur"] for e in host if e["name"] == "request"] == [pytest.approx(2000.0)]
    assert len([e for e in host if e["name"] == "launch"]) == len(out.trace.steps)


def test_an_ipu_run_shows_each_kernel_as_a_superstep(tiny_model, tmp_path):
    model = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("ipu-gc200", cores=3), tp=3)
    out = model.generate([[5, 6, 7]], max_new_tokens=2, eos_token_id=None)
    document = json.loads(write_chrome_trace(out.trace, tmp_path / "t.json").read_text())
    check_trace_event_format(document)
    events = document["traceEvents"]
    lanes = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 1}
    assert "supersteps" in lanes
    kernels = [e for e in events if e["ph"] == "X" and e["pid"] == 1 and e["tid"] == 1 and e.get("cat") != "host"]
    phases = [e for e in events if e["ph"] == "X" and e["pid"] == 1 and e.get("cat", "").startswith("superstep")]
    assert {e["cat"] for e in phases} == {"superstep compute", "superstep sync", "superstep exchange"}
    for kernel in kernels[:20]:  # the three phases tile the kernel's span exactly
        mine = sorted((e for e in phases if e["args"]["kernel"] == kernel["name"] and
                       kernel["ts"] <= e["ts"] < kernel["ts"] + kernel["dur"]), key=lambda e: e["ts"])  # fmt: skip
        assert mine[0]["ts"] == pytest.approx(kernel["ts"])
        assert sum(e["dur"] for e in mine) == pytest.approx(kernel["dur"])


def test_a_long_run_keeps_every_step_and_the_kernels_of_the_first_steps_and_of_each_bucket(tiny_model, tmp_path):
    """1000 decode steps of a 7B model on 32 cores were 50 million events: the writer was killed
    for want of memory. Past the budget, a step is on the steps lane only, unless it is the first
    of its bucket (later steps of a bucket run the same kernels). Within it, the file is the one
    document the whole list of events makes, written as it goes."""
    from tilesim.profiler.chrome import chrome_events, detailed

    model = tilesim.load(
        str(tiny_model("llama")),
        device=tilesim.Device("tiny", cores=3),
        tp=3,
        max_context=96,
        decode_buckets=[16, 32, 64, 96],
    )
    out = model.generate([[5, 6, 7]], max_new_tokens=80, eos_token_id=None)  # decode buckets of 16, 32, 64, 96
    steps = out.trace.steps
    whole = write_chrome_trace(out.trace, tmp_path / "whole.json", max_events=None)
    other = {"clock": "simulated device time, microseconds", "device": out.trace.device.get("name"),
             "model": out.trace.model, "steps_with_kernels": len(steps), "steps": len(steps)}  # fmt: skip
    document = {"traceEvents": list(chrome_events(out.trace, None)), "displayTimeUnit": "ns", "otherData": other}
    assert whole.read_text() == json.dumps(document, separators=(",", ":"), default=float)

    budget = 10 * len(document["traceEvents"]) // len(steps)
    path = write_chrome_trace(out.trace, tmp_path / "t.json", max_events=budget)
    cut = json.loads(path.read_text())
    check_trace_event_format(cut)
    lane = [e for e in cut["traceEvents"] if e.get("cat") == "step"]
    kept = [e["args"]["kernels"] for e in lane]
    assert len(lane) == len(steps) and kept == detailed(out.trace, budget)
    bucket = [(s.phase, s.shape["context"] if s.phase == "decode" else 0) for s in steps]
    first = kept.index(False)
    assert first >= 2 and not all(kept[first:])
    assert all(not kept[i] or bucket[i] not in bucket[:i] for i in range(first, len(steps)))  # only a bucket's first
    assert {b for b, k in zip(bucket, kept, strict=True) if k} == set(bucket)
    compute = [e for e in cut["traceEvents"] if e["ph"] == "X" and e["tid"] == 1 and e["pid"] > 0]
    windows = [(s.start * 1e6, (s.start + s.latency) * 1e6) for s, k in zip(steps, kept, strict=True) if k]
    assert compute and all(any(lo - 1e-6 <= e["ts"] <= hi + 1e-6 for lo, hi in windows) for e in compute)
    assert cut["otherData"]["steps_with_kernels"] == sum(kept) and cut["otherData"]["steps"] == len(steps)
    for bad in (-1, 2.5, "many", True):
        with pytest.raises(tilesim.ConfigError, match="max_events="):
            write_chrome_trace(out.trace, tmp_path / "bad.json", max_events=bad)
    assert not (tmp_path / "bad.json").exists()
