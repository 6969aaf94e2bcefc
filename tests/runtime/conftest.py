"""The Neuron SDK 2.18 rows predicted once for the session, in this process: the reference the
table's tests judge, and what the tests of `tilesim fidelity`'s printing give the command
(`fidelity_predicted_once`), so that each of those tests does not predict the 34 rows again.
One test runs the command's own predictions, in two processes, against this reference
(test_fidelity_table.py)."""

import warnings

import pytest

from tilesim import fidelity


@pytest.fixture(scope="session")
def neuron_table() -> list[dict]:
    with warnings.catch_warnings():  # the tables run Llama-2 past its 4096 positions
        warnings.simplefilter("ignore", UserWarning)
        return [fidelity.predict_latency(row) for row in fidelity.load_latency_rows()]


@pytest.fixture
def fidelity_predicted_once(neuron_table, monkeypatch):
    known = dict(zip(fidelity.load_latency_rows(), neuron_table, strict=True))

    def predict_latencies(rows, *, jobs=1, progress=None):
        if progress:
            progress(len(rows))
        return [dict(known[row]) for row in rows]  # copies: the command adds to each

    monkeypatch.setattr(fidelity, "predict_latencies", predict_latencies)
