"""benchmarks/calibrate.py: the two Neuron instances are fitted together, the NeuronCore-v2's
rates one figure for both and every other figure each instance's own; `--write` puts the
fitted figures into the instance's preset and its plain per-chip preset, and every other
character of the YAML (each figure's comment, which says what it means and where it comes
from) stays as it was."""

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

from tilesim.device.spec import load_preset
from tilesim.fidelity import load_latency_rows

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


def test_a_joint_fit_has_the_cores_rates_once_and_every_other_figure_per_instance(calibrate):
    instances = ("inf2.48xlarge", "trn1.32xlarge")
    params = calibrate.joint_params(instances)
    names = [p.name for p in params]
    own = [p.name for p in calibrate.PARAMS if p.name not in calibrate.SHARED]
    assert set(names) == set(calibrate.SHARED) | {f"{i}|{n}" for i in instances for n in own}
    assert len(names) == len(set(names)) == len(calibrate.SHARED) + 2 * len(own)
    values = calibrate.joint_start(instances)
    values.update(
        {"matmul.compute": 0.3, "inf2.48xlarge|request_overhead_s": 0.02, "trn1.32xlarge|request_overhead_s": 0.005}
    )
    for instance, request in (("inf2.48xlarge", 0.02), ("trn1.32xlarge", 0.005)):
        mine = calibrate.instance_values(values, instance)
        assert mine["matmul.compute"] == 0.3 and mine["request_overhead_s"] == request
        assert set(mine) == set(calibrate.START)  # every figure of a preset, no instance's name left in


@pytest.mark.filterwarnings("ignore:max_context=8192 is beyond:UserWarning")  # the benchmark's KV bucket
def test_each_row_is_predicted_with_its_own_instances_figures(calibrate):
    """A request's setup adds to its TTFT alone: two instances' rows, fitted together, each
    move by their own instance's setup time and by nothing else."""
    rows = [
        next(r for r in load_latency_rows() if r.instance == i and r.input_len == 128)
        for i in ("inf2.48xlarge", "trn1.32xlarge")
    ]
    instances = tuple(r.instance for r in rows)
    base = calibrate.joint_start(instances)
    moved = dict(base, **{"inf2.48xlarge|request_overhead_s": base["request_overhead_s"] + 0.01})
    before, after = calibrate.joint_predictions(rows, base), calibrate.joint_predictions(rows, moved)
    inf2 = rows[0]
    assert after[0] - before[0] == pytest.approx(0.01 / inf2.ttft_s, rel=1e-9)  # TTFT error: +10 ms over the published
    assert after[1:] == pytest.approx(before[1:], rel=1e-12, abs=0)  # its TPOT, the trn1 row's TTFT and TPOT


@pytest.mark.parametrize("plain", ["trn1", "inf2"])
def test_the_shipped_neuron_presets_carry_one_figure_for_each_of_the_cores_rates(calibrate, plain):
    shipped = [calibrate.current(name) for name in ("trn1.32xlarge", "inf2.48xlarge", plain)]
    for name in calibrate.SHARED:
        assert len({values[name] for values in shipped}) == 1, name


def test_a_left_out_fit_whose_rates_jumped_is_told_apart(calibrate):
    """The trn1 fit without Llama-2-7b (2026-12-06) put the products at 0.87 of peak against
    0.378 in sample and inf2's all-reduces at 0.29 of the links' bandwidth against 0.9: another
    basin, named; efficiencies within 1.5 times, and fixed costs, are not."""
    in_sample = calibrate.current("trn1.32xlarge")
    values = dict(in_sample)
    values.update({"matmul.compute": 0.8717, "bandwidth_efficiency": 0.2938})
    values["attention.memory"] = in_sample["attention.memory"] * 1.4
    values["step_overhead_s"] = in_sample["step_overhead_s"] * 10
    away = calibrate.moved(values, in_sample)
    assert [text.split()[0] for text in away] == ["matmul.compute", "bandwidth_efficiency"]
    assert away[0] == f"matmul.compute 0.872 ({in_sample['matmul.compute']:.3g})"
    assert calibrate.moved(in_sample, in_sample) == []
