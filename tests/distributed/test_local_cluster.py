"""The local Ray cluster `--ray auto` starts when none runs here (after test_fanout's cluster
has stopped: this module starts none of its own)."""

import os
import subprocess
import sys


def test_a_local_cluster_starts_without_rays_announcement():
    """Ray announces, on each start of a new cluster, that it enabled token authentication:
    the sweep printed that line above its table on every run."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    argv = ["sweep", "llama-2-7b", "--device", "trn1", "--tp", "8", "--timing-only", "--ray", "auto"]
    run = subprocess.run(
        [sys.executable, "-m", "tilesim.cli.main", *argv], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr
    assert "trn1" in run.stdout and "Token authentication" not in run.stderr, run.stderr
