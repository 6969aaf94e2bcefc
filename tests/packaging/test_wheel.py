"""tilesim installed from its wheel, not from this checkout: the data it reads at run time
travels with it (the device presets, the named configs, and the published measurements of
benchmarks/calibration/ that `tilesim fidelity` predicts). The checkout's editable install
finds them in the source tree either way, so only a wheel shows a file left out."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tilesim.fidelity import load_gpu_rows, predict_gpu

ROOT = Path(__file__).resolve().parents[2]
KEEP = ("pyproject.toml", "README.md", "tilesim", "device", "collectives", "models", "runtime", "profiler", "serving")


def test_a_wheel_carries_the_data_the_commands_read(tmp_path):
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ in it
    source.mkdir()
    for name in KEEP:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "benchmarks" / "calibration", source / "benchmarks" / "calibration")
    pip = ["-m", "pip", "--disable-pip-version-check", "-q"]
    python(*pip, "wheel", "--no-deps", *offline_build(), "-w", str(tmp_path / "wheel"), str(source))
    (wheel,) = (tmp_path / "wheel").glob("tilesim-*.whl")
    site = tmp_path / "site"
    python(*pip, "install", "--no-deps", "--target", str(site), str(wheel))
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install

    module, csv = python("-c", "import tilesim.fidelity as f; print(f.__file__, f.SDK218)", env=env).split()
    assert module.startswith(str(site)) and csv.startswith(str(site))
    cli = ["-m", "tilesim.cli.main"]
    assert "trn1.32xlarge" in {d["name"] for d in json.loads(python(*cli, "devices", "--json", env=env))}
    assert "llama-2-7b" in python(*cli, "generate", "llama-2-7b", "--timing-only", "--tp", "8", "--prompt-len", "16",
                                  "--max-new-tokens", "2", env=env)  # fmt: skip
    document = json.loads(python(*cli, "fidelity", "--device", "a100", "--json", env=env))
    expected = [predict_gpu(row)["predicted_tpot_s"] for row in load_gpu_rows()]
    assert [r["predicted_tpot_s"] for r in document["gpu"]] == expected
    assert len(document["allreduce"]) == 20


def python(*args: str, env: dict | None = None) -> str:
    """Run this interpreter with `args` outside the checkout; its output (it must succeed)."""
    run = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd="/", timeout=600)
    assert run.returncode == 0, run.stderr
    return run.stdout


def offline_build() -> list[str]:
    """Build with this environment's setuptools when it can make wheels itself (70.1 on), so
    that the test needs no package index; else in pip's isolated environment, as `make`
    installs."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return []
    return ["--no-build-isolation"] if (major, minor) >= (70, 1) else []
