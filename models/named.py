"""Models by name for timing-only runs: configs of published models shipped with tilesim.

`open_for_timing(name)` accepts a shipped name (`llama-2-70b`, `opt-13b`, ... see
`models/configs/`), a checkpoint folder (only its config.json is read), a `.gguf` file or
short name (only its metadata), and returns a weightless Checkpoint.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tilesim.errors import CheckpointError
from tilesim.models.checkpoint import (
    SHORT_NAMES,
    Checkpoint,
    config_from_json,
    did_you_mean,
    missing_config,
    named_configs,
    resolve,
)


def open_for_timing(name: str) -> Checkpoint:
    if name in named_configs():
        resource = resources.files("tilesim.models.configs") / f"{name}.json"
        with resources.as_file(resource) as path:
            config, module = config_from_json(Path(path))
        return Checkpoint(name, f"configs/{name}.json", "config", config, module.build_graph(config), None)
    if name not in SHORT_NAMES and not Path(name).expanduser().exists():
        hint = did_you_mean(name, [*named_configs(), *SHORT_NAMES])
        raise CheckpointError(
            f"{name}: no such file, folder or named model{hint}; named models: {', '.join(named_configs())}"
        )
    path = resolve(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise missing_config(path)
        config, module = config_from_json(path / "config.json")
        return Checkpoint(name, str(path), "config", config, module.build_graph(config), None)
    from tilesim.models.checkpoint import open_checkpoint

    return open_checkpoint(name)  # a GGUF: metadata and tokenizer come from the file
