"""Device presets: every preset loads, cites its sources, and bad presets fail clearly."""

import json
import re
from pathlib import Path

import pytest
import yaml

import tilesim
from tilesim.cli.main import main
from tilesim.device import Device, load_preset, preset_names
from tilesim.errors import ConfigError, UnknownPreset

PRESETS = Path(__file__).parents[2] / "device" / "presets"
REQUIRED = {"ipu-gc200", "ipu-bow", "c600", "trn1", "inf2", "a100", "h100", "tiny"}


def test_required_presets_exist_and_load():
    assert set(preset_names()) >= REQUIRED
    for name in preset_names():
        spec = load_preset(name)
        assert spec.name == name
        assert set(spec.core.peak_flops) == {"fp32", "fp16", "bf16", "fp8", "int8"}


def test_ipu_gc200_figures_match_the_programmers_guide():
    spec = load_preset("ipu-gc200")
    assert spec.core.tiles == 1472
    assert spec.core.tile_bytes == 624 * 1024
    assert dict(spec.placement) == {"weights": "tiles", "kv_cache": "tiles", "activations": "tiles"}


def test_bow_and_c600_figures_match_their_datasheets():
    bow = load_preset("ipu-bow")  # Bow-2000: 4 IPUs, 1.4 PFLOP/s FP16, 5,888 cores, 3.6 GB In-Processor-Memory
    assert bow.cores == 4 and bow.cores * bow.core.peak_flops["fp16"] == pytest.approx(1.4e15)
    assert bow.cores * bow.core.tiles == 5888 and bow.core.tile_memory_bytes == pytest.approx(900 * 2**20, rel=0.01)
    c600 = load_preset("c600")  # one IPU, 900 MB in the IPU and nothing off it, 280 TFLOP/s FP16, FP8 at twice that
    assert c600.cores == 1 and c600.core.offchip_bytes == 0
    assert c600.core.tile_memory_bytes == pytest.approx(900 * 2**20, rel=0.01)  # the "900 MB" is 1472 x 624 KiB
    assert c600.core.peak_flops["fp16"] == 280e12 and c600.core.peak_flops["fp8"] == 560e12
    for spec in (bow, c600, load_preset("ipu-gc200")):  # Poplar's linear mapping and its program's own memory
        assert spec.core.tile_grain == 64 and spec.core.reserved


def test_neuron_cores_have_16_gib_of_hbm_and_a_24_mib_sbuf():
    for name in ("trn1", "inf2"):
        spec = load_preset(name)
        assert spec.core.offchip_bytes == 16 * 2**30
        assert spec.core.tile_memory_bytes == 24 * 2**20
        assert spec.fabric.topology == "ring"


def test_every_figure_in_a_preset_cites_a_source_in_a_comment():
    for path in PRESETS.glob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r":\s*[-+]?\d", code):
                assert "#" in line, f"{path.name}:{number} has a figure without a source comment"


def write_preset(tmp_path, mutate):
    raw = yaml.safe_load((PRESETS / "tiny.yaml").read_text())
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["core"].update(tile_sram=1), r"bad\.yaml: core\.tile_sram: unknown field"),
        (lambda r: r["core"].pop("tiles"), r"bad\.yaml: core\.tiles: missing field"),
        (lambda r: r["fabric"].update(link_bandwidth=-5), r"bad\.yaml: fabric\.link_bandwidth: must be"),
        (lambda r: r["fabric"].update(link_latency="3 GHz"), r"fabric\.link_latency: unit 'GHz' is not a time unit"),
        (lambda r: r["fabric"].update(topology="mesh"), r"fabric\.topology: topology must be one of"),
        (lambda r: r["core"]["peak_flops"].pop("fp8"), r"core\.peak_flops: missing peak for dtype 'fp8'"),
        (lambda r: r.update(colour="red"), r"bad\.yaml: unknown field 'colour'"),
        (lambda r: r.pop("fabric"), r"bad\.yaml: missing field 'fabric'"),
        (lambda r: r["core"].update(offchip_bytes=0), r"placement\.weights is 'offchip' but the core has no off-chip"),
        (lambda r: r["core"].update(tile_bytes=0), r"placement\.activations is 'tiles' but the core has no tile mem"),
        (
            lambda r: r["fabric"].update(large_messages={"from_bytes": "1 MiB", "link_latency": "2 us"}),
            r"bad\.yaml: fabric\.large_messages\.bandwidth_efficiency: missing field",
        ),
        (
            lambda r: r["fabric"].update(
                large_messages={"from_bytes": 0, "link_latency": "2 us", "bandwidth_efficiency": 1}
            ),
            r"fabric\.large_messages\.from_bytes: must be at least 1 byte",
        ),
        (
            lambda r: r["fabric"].update(large_messages={"from": "1 MiB"}),
            r"fabric\.large_messages\.from: unknown field; known: from_bytes",
        ),
        (lambda r: r["fabric"].update(large_messages=3), r"fabric\.large_messages: expected a mapping of fields"),
        # sizes no device has, which overflowed numpy; a fraction of a byte; an infinite peak; a stopped clock
        (lambda r: r["core"].update(tiles=10**20), r"core\.tiles: must be from 1 to 16,777,216"),
        (lambda r: r["core"].update(tile_bytes=10**20), r"core\.tile_bytes: must be at most 1 EiB"),
        (lambda r: r["core"].update(tile_bytes=1.5), r"core\.tile_bytes: must be a whole number of bytes"),
        (lambda r: r["core"]["peak_flops"].update(fp32=float("inf")), r"peak_flops\.fp32: peak must be a finite"),
        (lambda r: r["core"].update(clock_hz=0), r"core\.clock_hz: a clock must be faster than 0 Hz"),
    ],
)
def test_bad_presets_raise_one_clear_error_naming_file_and_field(tmp_path, mutate, expected):
    with pytest.raises(ConfigError, match=expected):
        load_preset(write_preset(tmp_path, mutate))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: [unclosed\n", r"bad\.yaml: not valid YAML: expected ',' or '\]'.* at line 2, column 1$"),
        ("cores: 4\ncores: 8\n", r"bad\.yaml: not valid YAML: 'cores' is given twice at line 2, column 1$"),
        (b"\xff\xfe\x00", r"bad\.yaml: not a YAML preset \(not UTF-8 text\)$"),
        ("just words\n", r"bad\.yaml: a preset must be a mapping of fields"),
    ],
)
def test_a_preset_file_that_is_not_a_mapping_of_unique_fields_is_one_line(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=expected) as raised:
        load_preset(path)
    assert "\n" not in str(raised.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UnknownPreset, match=r"known presets: .*trn1"):
        tilesim.Device("trn9")


def test_overrides_answer_what_if_questions():
    base = tilesim.Device("trn1", cores=8)
    fast = tilesim.Device("trn1", cores=8, link_bandwidth=2 * base.spec.fabric.link_bandwidth)
    assert fast.num_cores == 8 and len(fast.cores) == 8
    assert fast.spec.fabric.link_bandwidth == 2 * base.spec.fabric.link_bandwidth
    assert Device("trn1", link_latency="3 us").spec.fabric.link_latency == pytest.approx(3e-6)
    assert Device("trn1", peak_flops={"fp8": 1e15}).spec.core.peak_flops["fp8"] == 1e15
    assert Device("trn1", peak_flops={"fp8": 1e15}).spec.core.peak_flops["bf16"] == base.spec.core.peak_flops["bf16"]
    with pytest.raises(ConfigError, match="unknown device override 'warp_speed'"):
        Device("trn1", warp_speed=9)
    with pytest.raises(ConfigError, match="33 cores asked for, but trn1 has at most 32"):
        Device("trn1", cores=33)
    # a single figure for peak_flops was a TypeError ("'str' object is not a mapping")
    for figure in ("190 TFLOP/s", 1e12, None):
        with pytest.raises(ConfigError, match=r"peak_flops: expected a mapping of dtype \(fp32, .*\) to FLOP/s"):
            Device("trn1", peak_flops=figure)


def test_devices_json_lists_every_preset_with_the_key_figures(capsys):
    assert main(["devices", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(preset_names())
    keys = {
        "name",
        "cores",
        "tiles_per_core",
        "tile_memory_bytes",
        "offchip_memory_bytes",
        "peak_flops",
        "memory_bandwidth",
        "link_bandwidth",
        "link_latency",
        "topology",
    }
    for row in rows:
        assert keys <= set(row)
        assert set(row["peak_flops"]) == {"fp32", "fp16", "bf16", "fp8", "int8"}
    gc200 = next(r for r in rows if r["name"] == "ipu-gc200")
    assert gc200["tiles_per_core"] == 1472 and gc200["tile_memory_bytes"] == 1472 * 624 * 1024


def test_devices_table_is_readable(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "ipu-gc200" in out and "1472 x 624 KiB" in out
    # the links a core has, each at its bandwidth: an A100's 12 NVLinks of 25 GB/s a direction
    assert "switch 12 x 25 GB/s" in out and "torus2d 4 x 103.1 GB/s" in out
