"""Serving on the emulated device: workloads of requests, schedulers that batch them into
the model's compiled programs (static, continuous, chunked prefill), the server loop that
runs them (real tokens, or timing-only), latency statistics, SLO rate searches, plots and
request traces. docs/serving.md walks through it.
"""

from tilesim.serving.scheduler import SCHEDULERS, Live, ServerState, StepPlan, register_scheduler
from tilesim.serving.server import ServeResult, serve
from tilesim.serving.slo import max_rate, parse_slo
from tilesim.serving.workload import Request, WorkloadError, read_workload, synthetic

__all__ = [
    "SCHEDULERS",
    "Live",
    "Request",
    "ServeResult",
    "ServerState",
    "StepPlan",
    "WorkloadError",
    "max_rate",
    "parse_slo",
    "read_workload",
    "register_scheduler",
    "serve",
    "synthetic",
]
