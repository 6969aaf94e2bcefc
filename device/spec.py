"""The description of a device: frozen specs, loaded from YAML presets and validated on load.

A `DeviceSpec` is `cores` identical `CoreSpec`s joined by a `FabricSpec`. Presets live in
`device/presets/*.yaml`, one file per device, every figure with its public source in a
comment. Loading checks every field (unknown key, missing key, wrong unit, negative
bandwidth...; one field's value: spec_values.py) and raises `ConfigError` naming the file and
the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from tilesim.device.spec_values import KERNEL_CLASSES, TENSOR_KINDS, Efficiency, parse_value
from tilesim.errors import ConfigError, UnknownPreset

MEMORY_REGIONS = ("tiles", "offchip")


@dataclass(frozen=True)
class CoreSpec:
    """One core: its tile memory, optional off-chip memory, compute peaks and overheads.

    Units: bytes, bytes/s, FLOP/s, Hz, seconds. `tile_bandwidth` is the aggregate bandwidth
    of all the core's tiles (what a kernel reading operands from tile memory sees).
    `efficiency` maps a kernel class to the achieved fraction of peak (fitted by calibration).
    """

    tiles: int
    tile_bytes: int
    tile_bandwidth: float
    offchip_bytes: int
    offchip_bandwidth: float
    peak_flops: MappingProxyType
    clock_hz: float
    kernel_overhead_s: float
    efficiency: MappingProxyType = field(
        default_factory=lambda: MappingProxyType({k: Efficiency() for k in KERNEL_CLASSES})
    )
    array: int | None = None  # a product's N and K are padded to multiples of this (systolic array side)
    dma_piece_s: float = 0.0  # fixed cost of each contiguous piece an off-chip transfer is cut into
    softmax_row_s: float = 0.0  # fixed cost of each softmax row (a query position of one head)
    # What the device's runtime holds on each core beside the model's tensors (category ->
    # bytes, off-chip if the core has off-chip memory): program code, DMA rings, ...
    reserved: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    program_bytes: int = 0  # what each compiled program (one bucket) holds on a core: its code and descriptors
    # Tile memory mapping: 0 fills consecutive tiles; a grain (bytes) deals each tensor's grains
    # out evenly over all tiles, as Poplar's linear mapping does (IPUs)
    tile_grain: int = 0
    # Bulk-synchronous cores (IPUs): each kernel is a compute phase, a sync of `sync_s` and an
    # exchange phase at `exchange_bandwidth` (tile to tile); 0: kernels run back to back
    sync_s: float = 0.0
    exchange_bandwidth: float = 0.0

    @property
    def tile_memory_bytes(self) -> int:
        """Bytes of tile memory on the core (all tiles together)."""
        return self.tiles * self.tile_bytes

    def bandwidth(self, region: str) -> float:
        """Bandwidth in bytes/s of the memory region `tiles` or `offchip`."""
        return self.tile_bandwidth if region == "tiles" else self.offchip_bandwidth


@dataclass(frozen=True)
class ChipSpec:
    """Cores grouped into chips: links inside a chip are faster than links between chips."""

    cores_per_chip: int
    link_bandwidth: float
    link_latency: float


@dataclass(frozen=True)
class ProtocolSpec:
    """The figures a collective of at least `from_bytes` (its whole buffer) sees instead of the
    fabric's own: a communication library switches protocol by message size (NCCL: LL128 for
    small messages, Simple for large ones, picked by its tuner), and each protocol has its own
    latency per hop and achieved bandwidth."""

    from_bytes: int
    link_latency: float
    bandwidth_efficiency: float


@dataclass(frozen=True)
class FabricSpec:
    """The links between cores.

    `link_bandwidth` is one link in one direction (bytes/s), `link_latency` the time of one
    hop (seconds). A core's `links_per_core` links are shared evenly among its neighbours in
    the topology (ring: 2 neighbours, torus2d: 4, switch: 1 uplink and 1 downlink), so
    neighbours may be joined by several parallel links. `collective_overhead_s` is a fixed
    cost paid once per collective (launch and synchronisation). `large_messages`, if given,
    replaces the latency and bandwidth efficiency of the links for large collectives
    (`for_message`).
    """

    topology: str
    link_bandwidth: float
    link_latency: float
    links_per_core: int
    collective_overhead_s: float = 0.0
    chip: ChipSpec | None = None
    bandwidth_efficiency: float = 1.0  # achieved fraction of every link's bandwidth
    large_messages: ProtocolSpec | None = None

    def for_message(self, nbytes: int) -> FabricSpec:
        """The fabric a collective of `nbytes` (its whole buffer) runs on: past
        `large_messages.from_bytes`, that protocol's latency and bandwidth efficiency."""
        big = self.large_messages
        if big is None or nbytes < big.from_bytes:
            return self
        return dataclasses.replace(
            self, link_latency=big.link_latency, bandwidth_efficiency=big.bandwidth_efficiency, large_messages=None
        )


@dataclass(frozen=True)
class HostSpec:
    """What the host and the device's runtime add around the kernels of a step (seconds).

    - `step_overhead_s`: launching one compiled program (a prefill or a decode step);
    - `request_overhead_s`: once per request, before its prefill (inputs to the device,
      switching to the prefill program); counted in time to first token;
    - `sample_s`: per sequence and step, taking the logits off the device and sampling;
    - `context_batch`: how many sequences one prefill program takes; a bigger batch is
      prefilled in turn, that many at a time (transformers-neuronx with continuous
      batching: one sequence), each program's activations staged by where the whole
      batch's hidden states fit. None: the whole batch at once.
    All zero / None unless a preset was calibrated against a runtime.
    """

    step_overhead_s: float = 0.0
    request_overhead_s: float = 0.0
    sample_s: float = 0.0
    context_batch: int | None = None


@dataclass(frozen=True)
class DeviceSpec:
    """A device preset: `cores` cores of one `CoreSpec` on one `FabricSpec`."""

    name: str
    description: str
    cores: int
    core: CoreSpec
    fabric: FabricSpec
    placement: MappingProxyType
    max_cores: int | None = None
    source: str = ""
    host: HostSpec = field(default_factory=HostSpec)

    def with_overrides(self, **overrides: Any) -> DeviceSpec:
        """A copy with some figures changed, e.g. `link_bandwidth=2 * spec.fabric.link_bandwidth`.

        Accepted names are `cores` and the fields of `CoreSpec`, `FabricSpec` and `HostSpec`; values may
        carry units as in presets (`link_latency="1 us"`). `peak_flops` is merged by dtype.
        """
        spec = self
        for name, value in overrides.items():
            spec = _override(spec, name, value)
        if "cores" in overrides and spec.max_cores is not None and spec.cores > spec.max_cores:
            raise ConfigError(f"{spec.cores} cores asked for, but {self.name} has at most {spec.max_cores}")
        _check_device(spec, f"override of preset {self.name!r}")
        return spec


_CORE_FIELDS = {
    "tiles": "count",
    "tile_bytes": "bytes",
    "tile_bandwidth": "bandwidth",
    "offchip_bytes": "bytes",
    "offchip_bandwidth": "bandwidth",
    "peak_flops": "flops_map",
    "clock_hz": "frequency",
    "kernel_overhead_s": "time",
    "efficiency": "efficiency_map",
    "array": "count",
    "dma_piece_s": "time",
    "softmax_row_s": "time",
    "reserved": "bytes_map",
    "program_bytes": "bytes",
    "tile_grain": "bytes",
    "sync_s": "time",
    "exchange_bandwidth": "bandwidth",
}
_FABRIC_FIELDS = {
    "topology": "topology",
    "link_bandwidth": "bandwidth",
    "link_latency": "time",
    "links_per_core": "count",
    "collective_overhead_s": "time",
    "chip": "chip",
    "bandwidth_efficiency": "fraction",
    "large_messages": "protocol",
}
_HOST_FIELDS = {
    "step_overhead_s": "time",
    "request_overhead_s": "time",
    "sample_s": "time",
    "context_batch": "count",
}
_CHIP_FIELDS = {"cores_per_chip": "count", "link_bandwidth": "bandwidth", "link_latency": "time"}
_PROTOCOL_FIELDS = {"from_bytes": "bytes", "link_latency": "time", "bandwidth_efficiency": "fraction"}
_OPTIONAL = {
    "efficiency",
    "collective_overhead_s",
    "chip",
    "max_cores",
    "source",
    "array",
    "dma_piece_s",
    "softmax_row_s",
    "reserved",
    "program_bytes",
    "tile_grain",
    "sync_s",
    "exchange_bandwidth",
    "bandwidth_efficiency",
    "large_messages",
    "host",
    *_HOST_FIELDS,
}
_TOP_FIELDS = {
    "name",
    "description",
    "cores",
    "max_cores",
    "core",
    "fabric",
    "placement",
    "source",
    "host",
}


def _parse_value(kind: str, value: Any, where: str) -> Any:
    if kind == "chip":
        return _parse_chip(value, where)
    if kind == "protocol":
        return _parse_protocol(value, where)
    return parse_value(kind, value, where)


def _parse_chip(value: Any, where: str) -> ChipSpec | None:
    if value is None:
        return None
    fields = _parse_section(value, _CHIP_FIELDS, where)
    return ChipSpec(**fields)


def _parse_protocol(value: Any, where: str) -> ProtocolSpec | None:
    if value is None:
        return None
    protocol = ProtocolSpec(**_parse_section(value, _PROTOCOL_FIELDS, where, optional=frozenset()))
    if protocol.from_bytes < 1:
        raise ConfigError(f"{where}.from_bytes: must be at least 1 byte, got {protocol.from_bytes}")
    return protocol


def _parse_section(
    raw: Any, schema: dict[str, str], where: str, optional: frozenset[str] | set[str] = _OPTIONAL
) -> dict[str, Any]:
    """The fields of `raw` parsed by `schema`; a field not in `optional` must be there (a
    protocol's `bandwidth_efficiency` is required though the fabric's own is optional)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of fields")
    unknown = set(raw) - set(schema)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"{where}.{name}: unknown field; known: {', '.join(schema)}")
    out = {}
    for name, kind in schema.items():
        if name not in raw:
            if name in optional:
                continue
            raise ConfigError(f"{where}.{name}: missing field")
        out[name] = _parse_value(kind, raw[name], f"{where}.{name}")
    return out


def spec_from_dict(raw: Any, where: str) -> DeviceSpec:
    """A validated DeviceSpec from the parsed YAML `raw`; `where` names the file in errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a preset must be a mapping of fields")
    unknown = set(raw) - _TOP_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"{where}: unknown field {name!r}; known: {', '.join(sorted(_TOP_FIELDS))}")
    for name in _TOP_FIELDS - _OPTIONAL:
        if name not in raw:
            raise ConfigError(f"{where}: missing field {name!r}")
    if not isinstance(raw["name"], str) or not raw["name"]:
        raise ConfigError(f"{where}: name: must be a non-empty string")
    core = CoreSpec(**_parse_section(raw["core"], _CORE_FIELDS, f"{where}: core"))
    fabric = FabricSpec(**_parse_section(raw["fabric"], _FABRIC_FIELDS, f"{where}: fabric"))
    placement = _parse_placement(raw["placement"], f"{where}: placement")
    host = HostSpec(**_parse_section(raw.get("host", {}), _HOST_FIELDS, f"{where}: host"))
    max_cores = raw.get("max_cores")
    if max_cores is not None:
        max_cores = _parse_value("count", max_cores, f"{where}: max_cores")
    spec = DeviceSpec(
        name=raw["name"],
        description=str(raw["description"]),
        cores=_parse_value("count", raw["cores"], f"{where}: cores"),
        core=core,
        fabric=fabric,
        placement=placement,
        max_cores=max_cores,
        source=str(raw.get("source", "")),
        host=host,
    )
    _check_device(spec, where)
    return spec


def _parse_placement(raw: Any, where: str) -> MappingProxyType:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a map of tensor kind to memory region")
    unknown = set(raw) - set(TENSOR_KINDS)
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown tensor kind; known: {TENSOR_KINDS}")
    out = {}
    for kind in TENSOR_KINDS:
        if kind not in raw:
            raise ConfigError(f"{where}.{kind}: missing (say 'tiles' or 'offchip')")
        if raw[kind] not in MEMORY_REGIONS:
            raise ConfigError(f"{where}.{kind}: must be 'tiles' or 'offchip', got {raw[kind]!r}")
        out[kind] = raw[kind]
    return MappingProxyType(out)


def _check_device(spec: DeviceSpec, where: str) -> None:
    core, fabric = spec.core, spec.fabric
    if core.offchip_bytes > 0 and core.offchip_bandwidth <= 0:
        raise ConfigError(f"{where}: core.offchip_bandwidth must be > 0 when offchip_bytes > 0")
    if core.tile_bandwidth <= 0:
        raise ConfigError(f"{where}: core.tile_bandwidth must be > 0")
    if fabric.link_bandwidth <= 0:
        raise ConfigError(f"{where}: fabric.link_bandwidth must be > 0")
    for kind, region in spec.placement.items():
        if region == "offchip" and core.offchip_bytes == 0:
            raise ConfigError(f"{where}: placement.{kind} is 'offchip' but the core has no off-chip memory")
        if region == "tiles" and core.tile_bytes == 0:  # each layout would fall back to off-chip unsaid
            raise ConfigError(f"{where}: placement.{kind} is 'tiles' but the core has no tile memory (tile_bytes 0)")
    needed = {"ring": 2, "torus2d": 4, "switch": 1}[fabric.topology]
    if fabric.links_per_core < needed:
        raise ConfigError(
            f"{where}: fabric.links_per_core is {fabric.links_per_core}, "
            f"but a {fabric.topology} needs at least {needed}"
        )
    if spec.max_cores is not None and spec.cores > spec.max_cores:
        raise ConfigError(f"{where}: {spec.cores} cores asked for, more than the {spec.max_cores} the device has")
    if fabric.chip is not None and spec.cores % fabric.chip.cores_per_chip:
        raise ConfigError(
            f"{where}: cores={spec.cores} is not a whole number of chips of {fabric.chip.cores_per_chip} cores"
        )


def _override(spec: DeviceSpec, name: str, value: Any) -> DeviceSpec:
    where = f"override {name}"
    if name == "cores":
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ConfigError(f"cores={value} must be at least 1")  # in the caller's words: a core count
        return dataclasses.replace(spec, cores=_parse_value("count", value, where))
    if name in _CORE_FIELDS:
        if name == "peak_flops":
            if not isinstance(value, dict):
                dtypes = ", ".join(spec.core.peak_flops)
                raise ConfigError(
                    f"{where}: expected a mapping of dtype ({dtypes}) to FLOP/s, e.g. "
                    f"peak_flops={{'bf16': '190 TFLOP/s'}}, got {value!r:.60}"
                )
            value = {**spec.core.peak_flops, **value}
        parsed = _parse_value(_CORE_FIELDS[name], value, where)
        return dataclasses.replace(spec, core=dataclasses.replace(spec.core, **{name: parsed}))
    if name in _FABRIC_FIELDS:
        parsed = _parse_value(_FABRIC_FIELDS[name], value, where)
        return dataclasses.replace(spec, fabric=dataclasses.replace(spec.fabric, **{name: parsed}))
    if name in _HOST_FIELDS:
        parsed = None if value is None and name == "context_batch" else _parse_value(_HOST_FIELDS[name], value, where)
        return dataclasses.replace(spec, host=dataclasses.replace(spec.host, **{name: parsed}))
    if name == "placement":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of tensor kind to 'tiles' or 'offchip', got {value!r}")
        return dataclasses.replace(spec, placement=_parse_placement({**spec.placement, **value}, where))
    known = ", ".join(["cores", "placement", *_CORE_FIELDS, *_FABRIC_FIELDS, *_HOST_FIELDS])
    raise ConfigError(f"unknown device override {name!r}; known: {known}")


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted."""
    folder = resources.files("tilesim.device.presets")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str | Path) -> DeviceSpec:
    """The DeviceSpec of a shipped preset (by name) or of a YAML file (by path)."""
    text_path = str(name_or_path)
    if text_path.endswith((".yaml", ".yml")) or "/" in text_path:
        path = Path(text_path)
        if not path.is_file():
            raise UnknownPreset(f"no preset file at {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML preset (not UTF-8 text)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the preset ({exc.strerror})") from None
        return _load_file(text, str(path))
    names = preset_names()
    if text_path not in names:
        raise UnknownPreset(f"unknown device preset {text_path!r}; known presets: {', '.join(names)}")
    resource = resources.files("tilesim.device.presets") / f"{text_path}.yaml"
    return _load_file(resource.read_text(), f"presets/{text_path}.yaml")


class _UniqueKeys(yaml.SafeLoader):
    """YAML as safe_load reads it, but a key given twice in one mapping is an error: PyYAML
    would keep the later value without a word (a preset's `cores` twice, say)."""


def _unique_mapping(loader: _UniqueKeys, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _load_file(text: str, where: str) -> DeviceSpec:
    try:
        raw = yaml.load(text, Loader=_UniqueKeys)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}{at}") from None
    return spec_from_dict(raw, where)
