"""Properties of every scheduler on random workloads (hypothesis): no request lost or
served twice, each gets its output length, slots never exceed max_num_seqs and no two
requests hold one slot at once, the KV cache in use stays within what the slots reserve and
the device holds, times are ordered, admission is first come first served. A scheduler of
one's own plugs in by name; one that asks for the impossible is refused."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tilesim
from tilesim.errors import GenerationError, TilesimError
from tilesim.serving import Request, StepPlan, register_scheduler, serve
from tilesim.serving.scheduler import SCHEDULERS


@pytest.fixture(scope="module")
def model():
    return tilesim.load("llama-2-7b", device="trn1", tp=8, dtype="bf16", timing_only=True, max_context=256)


requests_st = st.lists(
    st.tuples(st.floats(0, 0.2), st.integers(1, 120), st.integers(1, 40)), min_size=1, max_size=25
).map(lambda rows: [Request(i, gap * i, p, o) for i, (gap, p, o) in enumerate(rows)])


@given(
    requests=requests_st,
    scheduler=st.sampled_from(["static", "continuous", "chunked"]),
    slots=st.integers(1, 6),
    chunk=st.integers(1, 64),
)
def test_every_scheduler_serves_each_request_once_within_its_slots(model, requests, scheduler, slots, chunk):
    chunk = chunk if scheduler == "chunked" else None
    result = serve(model, requests, scheduler=scheduler, max_num_seqs=slots, chunk_size=chunk)
    assert sorted(r.request.id for r in result.requests) == [r.id for r in requests]
    for live in result.requests:
        r = live.request
        assert live.generated == r.output_tokens and live.prefilled == r.prompt_tokens
        assert r.arrival <= live.admitted <= live.first_token <= live.finished
        assert 0 <= live.slot < slots
    assert max(result.steps.running) <= slots
    by_slot: dict[int, list] = {}
    for live in result.requests:
        by_slot.setdefault(live.slot, []).append((live.admitted, live.finished))
    for spans in by_slot.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "one slot, one request at a time"
    per_position, memory = result.memory["kv_bytes_per_position"], result.memory
    assert max(result.steps.kv_positions) * per_position <= memory["by_kind"]["kv_cache"]
    assert sum(memory["by_kind"].values()) <= memory["capacity"]
    order = sorted(result.requests, key=lambda r: (r.request.arrival, r.request.id))
    admitted = [r.admitted for r in order]
    assert admitted == sorted(admitted), "first come, first served"
    starts = result.steps.start
    assert all(a <= b for a, b in itertools.pairwise(starts))


class LastComeFirst:
    """The newest waiting request first: a policy of one's own."""

    name = "lifo"

    def plan(self, state):
        while state.waiting and state.free_slots:
            state.admit(state.waiting[-1])
        new = [r for r in state.running if r.prefilling]
        if new:
            return StepPlan(prefill=[(r, r.request.prompt_tokens - r.prefilled) for r in new])
        return StepPlan(decode=list(state.running)) if state.running else None


def test_a_scheduler_of_ones_own_plugs_in_by_name(model):
    register_scheduler("lifo", LastComeFirst)
    try:
        requests = [Request(i, 0.001 * i, 64, 8) for i in range(6)]
        result = serve(model, requests, scheduler="lifo", max_num_seqs=1)
    finally:
        del SCHEDULERS["lifo"]
    order = [r.request.id for r in sorted(result.requests, key=lambda r: r.admitted)]
    assert order[0] == 0 and order[1:] == [5, 4, 3, 2, 1]


class DecodesTooSoon:
    name = "broken"

    def plan(self, state):
        while state.waiting and state.free_slots:
            state.admit(state.waiting[0])
        return StepPlan(decode=list(state.running)) if state.running else None


class DoesNothing:
    name = "idle"

    def plan(self, state):
        return None


@pytest.mark.parametrize("policy", [DecodesTooSoon(), DoesNothing()])
def test_a_scheduler_that_cannot_be_run_gets_a_clear_error(model, policy):
    with pytest.raises(TilesimError, match=policy.name):
        serve(model, [Request(0, 0.0, 16, 4)], scheduler=policy)


def test_unknown_scheduler_and_bad_slot_counts_are_refused(model):
    with pytest.raises(TilesimError, match=r"unknown scheduler 'fifo'.*continuous"):
        serve(model, [Request(0, 0.0, 16, 4)], scheduler="fifo")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(TilesimError, match="max_num_seqs"):
            serve(model, [Request(0, 0.0, 16, 4)], max_num_seqs=bad)
    bad_requests = [
        (None, "requests=None must be a list of serving.Request"),
        ([{"arrival": 0}], "give serving.Request objects"),
        ([Request(0, float("nan"), 16, 4)], r"request 0: arrival=nan must be a time"),  # it never arrived: a hang
        ([Request(0, -1.0, 16, 4)], r"request 0: arrival=-1.0 must be a time"),
        ([Request(0, 0.0, 16.5, 4)], "prompt_tokens=16.5 must be a whole number"),
        ([Request(0, 0.0, 16, 0)], "output_tokens=0 must be a whole number of at least 1"),
        ([Request(3, 0.0, 16, 4), Request(3, 1.0, 16, 4)], "request id 3 appears twice"),
    ]
    for requests, message in bad_requests:
        with pytest.raises(TilesimError, match=message):
            serve(model, requests)
    with pytest.raises(TilesimError, match="progress=5 must be a function"):
        serve(model, [Request(0, 0.0, 16, 4)], progress=5)
    # a wrong arity was a TypeError once the first request finished, the whole run simulated
    with pytest.raises(TilesimError, match=r"progress=.* is called with one argument \(requests finished\)"):
        serve(model, [Request(0, 0.0, 16, 4)], progress=lambda: None)
    with pytest.raises(TilesimError, match="chunk_size=0 must be at least 1"):
        serve(model, [Request(0, 0.0, 16, 4)], scheduler="chunked", chunk_size=0)
    for whole_prompts in ("continuous", "static"):
        with pytest.raises(TilesimError, match=f"chunk_size=8 is the chunked .* scheduler='{whole_prompts}'"):
            serve(model, [Request(0, 0.0, 16, 4)], scheduler=whole_prompts, chunk_size=8)
    with pytest.raises(TilesimError, match="request 7 needs 200 prompt \\+ 100 output = 300 positions"):
        serve(model, [Request(7, 0.0, 200, 100)])
    with pytest.raises(TilesimError, match="no requests"):
        serve(model, [])
    assert issubclass(GenerationError, TilesimError)


any_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 300), st.booleans(), st.none())


@given(st.lists(st.tuples(any_number, any_number, any_number, any_number), min_size=1, max_size=4))
def test_requests_of_any_values_are_served_or_refused_never_hung(model, rows):
    # Requests built in Python skip read_workload's checks: serve() must check them itself (a NaN
    # arrival used to wait forever for its time to come)
    requests = [Request(rid, arrival, p, o) for rid, arrival, p, o in rows]
    try:
        result = serve(model, requests, max_num_seqs=2)
    except TilesimError:
        return
    assert sorted(live.request.id for live in result.requests) == sorted(r.id for r in requests)
