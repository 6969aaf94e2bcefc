"""The local Ray cluster of the distributed tests: 2 CPUs on 127.0.0.1, one per test module."""

import pytest
import ray

from tilesim.fanout import start_local


@pytest.fixture(scope="module")
def cluster():
    start_local(ray, 2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
