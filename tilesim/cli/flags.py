"""Options that mean something only beside another (`--micro-batches` with pipeline stages,
`--cv` with gamma arrivals ...). Given alone they would be ignored without a word, so the
command refuses them and says what they are for.

Such options default to None in the parser, so that "given" is "not None"; `fill` then sets
the defaults the help states.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tilesim.errors import ConfigError


def only_with(args: argparse.Namespace, rules: dict[str, tuple[bool, str]]) -> None:
    """Refuse each option of `rules` (a dest: whether it applies here, what it is for) that
    was given where it does not apply."""
    for name, (applies, purpose) in rules.items():
        value = getattr(args, name)
        if value is not None and value is not False and not applies:
            raise ConfigError(f"--{name.replace('_', '-')} is for {purpose}")


def fill(args: argparse.Namespace, defaults: dict[str, object]) -> None:
    """Set each option that was not given to its default."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def apart(args: argparse.Namespace, *names: str) -> None:
    """Refuse output options that name one path (a trace file and a plots folder cannot share it)."""
    given = [(name, Path(getattr(args, name)).resolve()) for name in names if getattr(args, name)]
    for i, (name, path) in enumerate(given):
        for other, where in given[i + 1 :]:
            if path == where:
                raise ConfigError(f"--{name} and --{other} both name {path}; give each its own path")


def int_list(text: str, flag: str, example: str) -> list[int]:
    """`1,2,4` as [1, 2, 4]; an empty item ('1,,2', a trailing comma) is refused, as a typo the
    command would otherwise run past."""
    try:
        return [int(item) for item in text.replace(" ", "").split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give comma-separated {example}") from None


def within_device(device: str, cores: int, needs: str | None = None) -> None:
    """Refuse more cores than the preset `device` has, in the words of the options that asked
    for them (`needs`, e.g. "--tp 32 with --pp 2 needs 64 cores"; None: --cores itself)."""
    from tilesim.device.spec import load_preset

    most = load_preset(device).max_cores
    if most is not None and cores > most:
        raise ConfigError(f"--cores {cores}: {device} has at most {most} cores" if needs is None
                          else f"{needs}, but {device} has at most {most}")  # fmt: skip
