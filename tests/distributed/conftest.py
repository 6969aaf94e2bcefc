"""The local Ray cluster of the distributed tests: 2 CPUs on 127.0.0.1, one per test module."""

import pytest
import ray


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
