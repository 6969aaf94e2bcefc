"""One run of a model at a time: threads wait their turn, a run started from a callback of
the same model's run is refused (runtime/exclusive.py)."""

import threading
import time

import pytest

import tilesim
from tilesim.errors import GenerationError
from tilesim.serving import Request, serve

A, B = [5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]


def test_two_threads_on_one_model_each_get_the_tokens_they_get_alone(tiny_model):
    """The first run pauses in its callback while the second thread starts: before the guard,
    the second run wrote its prompt over the first's KV cache and both came out wrong."""
    model = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=3), tp=3)
    alone = {p[0]: model.generate([p], 12, eos_token_id=None).tokens[0].tolist() for p in (A, B)}
    started, got = threading.Event(), {}

    def first_pauses(i, token):
        if not started.is_set():
            started.set()
            time.sleep(0.3)  # the second thread is running or waiting by now

    def run(prompt, on_token=None):
        got[prompt[0]] = model.generate([prompt], 12, eos_token_id=None, on_token=on_token).tokens[0].tolist()

    first = threading.Thread(target=run, args=(A, first_pauses))
    first.start()
    started.wait(30)
    second = threading.Thread(target=run, args=(B,))
    second.start()
    first.join(60)
    second.join(60)
    assert got == alone


def test_a_run_started_from_a_callback_of_the_same_models_run_is_refused(tiny_model):
    model = tilesim.load(str(tiny_model("llama")), device=tilesim.Device("tiny", cores=3), tp=3)

    def again(i, token):
        model.generate([B], 2)

    with pytest.raises(GenerationError, match="started from inside one of its runs"):
        model.generate([A], 3, on_token=again)
    with pytest.raises(GenerationError, match="started from inside one of its runs"):
        serve(model, [Request(0, 0.0, 4, 3)], progress=lambda n: model.generate([B], 2))
    # the model is free again afterwards, and still right
    assert (
        model.generate([A], 4, eos_token_id=None).tokens[0].tolist()
        == model.generate([A], 4, eos_token_id=None).tokens[0].tolist()
    )
