"""Shared test settings: hypothesis profiles (bounded by default, deeper with TILESIM_DEEP=1)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("deep", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("deep" if os.environ.get("TILESIM_DEEP") else "default")
