"""benchmarks/calibrate.py --write: the fitted figures go into the instance's preset and its
plain per-chip preset, and every other character of the YAML (each figure's comment, which
says what it means and where it comes from) stays as it was."""

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

from tilesim.device.spec import load_preset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def calibrate(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("calibrate", ROOT / "benchmarks" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "calibrate", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    for name in ("trn1.32xlarge", "trn1"):
        shutil.copy(module.PRESETS / f"{name}.yaml", tmp_path / f"{name}.yaml")
    monkeypatch.setattr(module, "PRESETS", tmp_path)
    return module


def _value_and_comment(text: str, key: str) -> tuple[str, str]:
    m = re.search(rf"^\s*{re.escape(key)}:\s*([^#\n]*?)\s*(#.*)$", text, re.M)
    return m.group(1), m.group(2)


def test_write_preset_changes_the_figures_of_both_presets_and_keeps_their_comments(calibrate, tmp_path):
    before = {n: (tmp_path / f"{n}.yaml").read_text() for n in ("trn1.32xlarge", "trn1")}
    values = calibrate.current("trn1.32xlarge")
    values.update({"kernel_overhead_s": 5.943e-6, "bandwidth_efficiency": 0.8786, "matmul.compute": 0.2911})
    calibrate.write_preset("trn1.32xlarge", values)
    for name, old in before.items():
        new = (tmp_path / f"{name}.yaml").read_text()
        assert _value_and_comment(new, "kernel_overhead_s") == (
            "5.943 us",
            _value_and_comment(old, "kernel_overhead_s")[1],
        )
        assert _value_and_comment(new, "bandwidth_efficiency")[0] == "0.8786"
        assert _value_and_comment(new, "matmul")[0].startswith("{compute: 0.291, memory:")
        changed = [(a, b) for a, b in zip(old.splitlines(), new.splitlines(), strict=True) if a != b]
        assert len(changed) == 3, changed  # only the three lines whose figures moved
        for a, b in changed:
            assert a.index("#") == b.index("#")  # the comment keeps its column
        spec = load_preset(tmp_path / f"{name}.yaml")  # still a valid preset, with the new figures
        assert spec.core.kernel_overhead_s == pytest.approx(5.943e-6)
        assert spec.fabric.bandwidth_efficiency == pytest.approx(0.8786)
        assert spec.core.efficiency["matmul"].compute == pytest.approx(0.291)


def test_writing_the_shipped_figures_back_changes_nothing(calibrate, tmp_path):
    before = {n: (tmp_path / f"{n}.yaml").read_text() for n in ("trn1.32xlarge", "trn1")}
    calibrate.write_preset("trn1.32xlarge", calibrate.current("trn1.32xlarge"))
    assert {n: (tmp_path / f"{n}.yaml").read_text() for n in before} == before
